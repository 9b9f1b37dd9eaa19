/**
 * What the chunk path of --apply does with a verified chunk index: each
 * chunk of the new root is already in the target slot (a resumed apply), or
 * copied from the running slot where a chunk with its hash lies, or fetched.
 * Fetched chunks are merged into few single-range requests (S3 and most CDNs
 * serve one range per request): neighbours join when the bytes between them
 * are few (those are fetched too, cheaper than another request), up to a cap
 * that is also the device's buffer for one request.
 */
import { createHash, type Hash } from "node:crypto";
import { VERITY_BLOCK, verityLayout, type VerityRecord } from "../verity.ts";
import type { Chunk } from "./chunker.ts";

export interface ChunkRequestLimits {
  /** Bytes between two missing chunks that are fetched rather than cost another request. */
  maxGap: number;
  /** At most this many bytes in one request (a single chunk may exceed it). */
  maxRequest: number;
}

export const DEFAULT_CHUNK_REQUESTS: ChunkRequestLimits = { maxGap: 64 * 1024, maxRequest: 8 * 1024 * 1024 };

/** One ranged request: bytes [start, end) of the root, exactly these chunks. */
export interface ChunkFetch {
  start: number;
  end: number;
  chunks: Chunk[];
}

export interface ChunkWork {
  /** Chunks copied from the running slot: `from` is where the running slot holds the same bytes. */
  copies: Array<{ chunk: Chunk; from: number }>;
  fetches: ChunkFetch[];
  /** Bytes the target slot holds already (a resumed apply). */
  heldBytes: number;
  /** Bytes to download. */
  fetchBytes: number;
}

/** A root's dm-verity superblock and hash tree: bytes [offset, offset + bytes) of the slot. */
export interface TreeSpan {
  offset: number;
  bytes: number;
  record: VerityRecord;
}

/**
 * The part of the root the chunk path computes instead of fetching: the
 * dm-verity superblock and tree that the signed manifest's record places
 * after the file system. They change almost wholly when any data block does
 * (55% of the demo pair's new chunks), and they are a function of the file
 * system's bytes that the device has just assembled. Undefined when the root
 * has no tree, or when the record does not place it inside the `covered`
 * bytes the index describes: then every chunk is fetched or copied as before.
 */
export function computedTree(verity: VerityRecord | undefined, covered: number): TreeSpan | undefined {
  if (!verity) return undefined;
  const offset = verity.data_blocks * VERITY_BLOCK;
  const bytes = verityLayout(offset).totalBytes - offset;
  return offset + bytes <= covered ? { offset, bytes, record: verity } : undefined;
}

/**
 * The chunks the device copies or fetches: with a computed tree, those that
 * start inside the file system. One may reach into the tree; it is taken
 * whole (its hash covers both sides), and the tree written over its end.
 */
export function assembledChunks(chunks: readonly Chunk[], tree: TreeSpan | undefined): readonly Chunk[] {
  return tree ? chunks.filter((c) => c.offset < tree.offset) : chunks;
}

/**
 * `held[i]`: the target slot already holds chunk i; `have(sha256)`: where
 * the running slot holds a chunk with that hash, if anywhere.
 */
export function planChunkWork(
  chunks: readonly Chunk[],
  held: readonly boolean[],
  have: (sha256: string) => number | undefined,
  limits: ChunkRequestLimits = DEFAULT_CHUNK_REQUESTS,
): ChunkWork {
  const fetches: ChunkFetch[] = [];
  const fetched = new Set<number>();
  let open: { first: number; last: number } | undefined;
  const close = () => {
    if (!open) return;
    const span = chunks.slice(open.first, open.last + 1);
    const last = span[span.length - 1] as Chunk;
    fetches.push({ start: (span[0] as Chunk).offset, end: last.offset + last.size, chunks: span });
    for (let i = open.first; i <= open.last; i++) fetched.add(i);
    open = undefined;
  };
  chunks.forEach((c, i) => {
    if (held[i] || have(c.sha256) !== undefined) return;
    if (open) {
      const start = (chunks[open.first] as Chunk).offset;
      const prev = chunks[open.last] as Chunk;
      const gap = c.offset - (prev.offset + prev.size);
      if (gap <= limits.maxGap && c.offset + c.size - start <= limits.maxRequest) {
        open.last = i;
        return;
      }
      close();
    }
    open = { first: i, last: i };
  });
  close();
  const copies: ChunkWork["copies"] = [];
  let heldBytes = 0;
  chunks.forEach((c, i) => {
    if (fetched.has(i)) return;
    if (held[i]) heldBytes += c.size;
    else copies.push({ chunk: c, from: have(c.sha256) as number });
  });
  const fetchBytes = fetches.reduce((n, f) => n + f.end - f.start, 0);
  return { copies, fetches, heldBytes, fetchBytes };
}

/**
 * Hashes a stream at given chunk boundaries (blocks of any size pushed in
 * order from the first chunk's offset): which chunks the bytes match.
 */
export class ChunkChecker {
  readonly matches: boolean[] = [];
  private index = 0;
  private filled = 0;
  private hash: Hash = createHash("sha256");

  constructor(private readonly chunks: readonly Chunk[]) {}

  push(bytes: Uint8Array): void {
    let at = 0;
    while (at < bytes.length && this.index < this.chunks.length) {
      const chunk = this.chunks[this.index] as Chunk;
      const take = Math.min(bytes.length - at, chunk.size - this.filled);
      this.hash.update(bytes.subarray(at, at + take));
      at += take;
      this.filled += take;
      if (this.filled === chunk.size) {
        this.matches.push(this.hash.digest("hex") === chunk.sha256);
        this.hash = createHash("sha256");
        this.filled = 0;
        this.index++;
      }
    }
  }
}
