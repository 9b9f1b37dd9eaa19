/**
 * Read buffers for response streams, shared by all clients: a response takes
 * one for each read and gives it back when its write has completed. Freed
 * buffers are kept for reuse up to a byte budget; beyond it they go to the
 * garbage collector. So memory follows the clients that are actually being
 * served, and does not stay pinned once they leave.
 *
 * Buffers above the smallest size are rationed: all of them taken together
 * stay under `bigBytes`. A client looks fast while the kernel's socket buffers
 * fill (megabytes at memory speed), so many slow readers can earn big chunks
 * before they show how slow they are; the ration keeps that to a fixed sum,
 * and once it is spent a stream gets the smallest size instead.
 */
export const SIZE_CLASSES = [16 * 1024, 64 * 1024, 256 * 1024] as const;
const SMALLEST = SIZE_CLASSES[0];

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private pooledBytes = 0;
  private bigTaken = 0;

  constructor(
    private readonly budgetBytes: number,
    private readonly bigBytes: number,
  ) {
    for (const size of SIZE_CLASSES) this.free.set(size, []);
  }

  /** A buffer of `size` bytes, or of the smallest size when the big ones are rationed out. */
  take(size: number): Buffer {
    if (size > SMALLEST) {
      if (this.bigTaken + size > this.bigBytes) size = SMALLEST;
      else this.bigTaken += size;
    }
    const list = this.free.get(size);
    const buffer = list?.pop();
    if (buffer) {
      this.pooledBytes -= size;
      return buffer;
    }
    return Buffer.allocUnsafeSlow(size);
  }

  give(buffer: Buffer): void {
    if (buffer.length > SMALLEST) this.bigTaken -= buffer.length;
    const list = this.free.get(buffer.length);
    if (!list || this.pooledBytes + buffer.length > this.budgetBytes) return;
    list.push(buffer);
    this.pooledBytes += buffer.length;
  }

  /** Lets every kept buffer go (when no stream is left to reuse them). */
  drain(): void {
    for (const list of this.free.values()) list.length = 0;
    this.pooledBytes = 0;
  }

  get bytes(): number {
    return this.pooledBytes;
  }

  /** Big buffers out with streams now. */
  get bigInUse(): number {
    return this.bigTaken;
  }
}
