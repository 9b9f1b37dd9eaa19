/**
 * Content-defined chunking (FastCDC, Xia et al., USENIX ATC 2016) for the
 * chunk index of a root partition: boundaries follow the bytes, not their
 * offsets, so an insertion or a changed file moves only the chunks around
 * it, and a device can find the chunks it already holds anywhere in its own
 * slots. Streaming: bytes are pushed in pieces of any size and the cut points
 * are the same as for one piece. No npm package does this (ENVIRONMENT.md),
 * so it is written here; it is pure and allocation-free per byte.
 */
import { createHash } from "node:crypto";

export interface ChunkerParams {
  /** No cut before this many bytes. */
  min: number;
  /** The size chunks are normalised around (a power of two). */
  avg: number;
  /** A cut at the latest here. */
  max: number;
}

/**
 * Measured on the demo's pair (v2 = v1 + `tree`, 300 MiB roots): new chunks of v2 are 808 KB
 * with these sizes (11,748 chunks), 1.87 MB with 16/64/256 KiB (2,938 chunks); casync: 1.60 MB.
 */
export const DEFAULT_CHUNKER: ChunkerParams = { min: 4 * 1024, avg: 16 * 1024, max: 64 * 1024 };

/** The gear table: 256 pseudo-random 32-bit words, fixed forever (a chunk index depends on it). */
export const GEAR: Uint32Array = (() => {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    table[i] = createHash("sha256").update(`eos-gear-${i}`).digest().readUInt32LE(0);
  }
  return table;
})();

/**
 * A mask of the top `bits` bits: in a gear hash bit k depends on the last k+1
 * bytes, so the top bits see a window of up to 32 bytes.
 */
function topMask(bits: number): number {
  return ((2 ** bits - 1) * 2 ** (32 - bits)) >>> 0;
}

function log2(n: number): number {
  return Math.round(Math.log2(n));
}

/**
 * Finds cut points in a stream. `push` returns the cut offsets (absolute,
 * from the start of the stream) that the bytes pushed so far decide; `end`
 * returns the last one (the stream's length), if any bytes are pending.
 */
export class Chunker {
  private readonly maskS: number;
  private readonly maskL: number;
  private hash = 0;
  /** Bytes since the last cut. */
  private length = 0;
  /** Absolute offset of the next byte. */
  private offset = 0;

  constructor(private readonly params: ChunkerParams = DEFAULT_CHUNKER) {
    if (!(params.min > 0 && params.min <= params.avg && params.avg <= params.max))
      throw new RangeError("chunker: need 0 < min <= avg <= max");
    const bits = log2(params.avg);
    // Normalised chunking: a harder mask before the average size, an easier one after.
    this.maskS = topMask(bits + 2);
    this.maskL = topMask(Math.max(1, bits - 2));
  }

  push(bytes: Uint8Array): number[] {
    const cuts: number[] = [];
    const { min, avg, max } = this.params;
    let hash = this.hash;
    let length = this.length;
    for (let i = 0; i < bytes.length; i++) {
      length++;
      // The gear hash only needs the last 32 bytes; skipping the first `min` bytes is FastCDC's
      // cut-point skipping, and resetting it at each cut keeps cuts independent of the past.
      if (length <= min - 32) continue;
      hash = ((hash << 1) + (GEAR[bytes[i] as number] as number)) >>> 0;
      if (length < min) continue;
      const mask = length < avg ? this.maskS : this.maskL;
      if ((hash & mask) === 0 || length >= max) {
        cuts.push(this.offset + i + 1);
        length = 0;
        hash = 0;
      }
    }
    this.offset += bytes.length;
    this.hash = hash;
    this.length = length;
    return cuts;
  }

  end(): number[] {
    return this.length > 0 ? [this.offset] : [];
  }
}

export interface Chunk {
  offset: number;
  size: number;
  sha256: string;
}

/** Chunks and their hashes of a stream pushed in pieces of any size: what `chunkBuffer` gives for the whole. */
export class ChunkHasher {
  readonly chunks: Chunk[] = [];
  private readonly chunker: Chunker;
  private hash = createHash("sha256");
  private start = 0;
  private offset = 0;

  constructor(params: ChunkerParams = DEFAULT_CHUNKER) {
    this.chunker = new Chunker(params);
  }

  push(bytes: Uint8Array): void {
    let at = 0;
    for (const cut of this.chunker.push(bytes)) this.cutAt(bytes, at, (at = cut - this.offset));
    this.hash.update(bytes.subarray(at));
    this.offset += bytes.length;
  }

  end(): Chunk[] {
    for (const cut of this.chunker.end()) this.cutAt(new Uint8Array(0), 0, cut - this.offset);
    return this.chunks;
  }

  private cutAt(bytes: Uint8Array, from: number, to: number): void {
    this.hash.update(bytes.subarray(from, to));
    const offset = this.offset + to;
    this.chunks.push({ offset: this.start, size: offset - this.start, sha256: this.hash.digest("hex") });
    this.start = offset;
    this.hash = createHash("sha256");
  }
}

/** Chunks of a whole buffer with their hashes (tests and small inputs; devices stream). */
export function chunkBuffer(data: Uint8Array, params: ChunkerParams = DEFAULT_CHUNKER): Chunk[] {
  const chunker = new Chunker(params);
  const cuts = [...chunker.push(data), ...chunker.end()];
  const chunks: Chunk[] = [];
  let start = 0;
  for (const cut of cuts) {
    chunks.push({
      offset: start,
      size: cut - start,
      sha256: createHash("sha256").update(data.subarray(start, cut)).digest("hex"),
    });
    start = cut;
  }
  return chunks;
}
