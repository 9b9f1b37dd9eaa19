/**
 * Where a partition's zero tail begins. A root slot is larger than the file
 * system in it (room for the next versions), and those zeros are most of a
 * full download (126 of the demo's 300 MiB): the manifest records where the
 * data ends so the stream can stop there and the device writes the zeros.
 */

/** The tail is found in pages of this size: the stream's end stays aligned for block devices. */
export const DATA_PAGE = 4096;

const ZERO_PAGE = new Uint8Array(DATA_PAGE);

/** Fed the partition's bytes in order (any piece sizes that are multiples of DATA_PAGE, the last one any). */
export class DataEnd {
  /** Bytes from the start up to the end of the last page that holds a non-zero byte. */
  end = 0;

  see(bytes: Uint8Array, at: number): void {
    for (let page = Math.ceil(bytes.length / DATA_PAGE) - 1; page >= 0; page--) {
      const start = page * DATA_PAGE;
      const stop = Math.min(bytes.length, start + DATA_PAGE);
      const piece = bytes.subarray(start, stop);
      if (Buffer.compare(piece, ZERO_PAGE.subarray(0, piece.length)) !== 0) {
        this.end = Math.max(this.end, at + stop);
        return;
      }
    }
  }
}
