/**
 * Where the chunks of the running root lie, kept between runs: the root is
 * read-only and named by its sha256, so chunking it once per root is enough
 * and a periodic `--check` need not read the slot again (issue 12). The file
 * is only a hint: the chunk path re-hashes every chunk it copies, so a stale
 * or forged entry costs a fallback, never a wrong slot. Hence a file that
 * does not parse, or whose key (root sha256, bytes chunked, chunker) is not
 * the one asked for, is ignored rather than an error.
 *
 * Layout: one JSON header line, then per distinct chunk its first offset
 * (u64, big-endian) and sha256 (32 bytes). Only first occurrences are kept:
 * the slot's zero tail is one entry, not thousands.
 */
import type { Chunk, ChunkerParams } from "./chunker.ts";

export const CHUNK_CACHE_SCHEMA = 1;
const ENTRY = 8 + 32;
/** Larger files are neither written nor read: ~200k distinct chunks, a root of gigabytes at 16 KiB. */
export const MAX_CHUNK_CACHE_BYTES = 8 * 1024 * 1024;

export interface ChunkCacheKey {
  /** sha256 of the bytes chunked: the running root's identity. */
  sha256: string;
  /** Bytes chunked from the slot's start. */
  length: number;
  chunker: ChunkerParams;
}

/** First offset of each distinct chunk hash. */
export type ChunkLocations = Map<string, number>;

export function locateChunks(chunks: readonly Chunk[]): ChunkLocations {
  const at: ChunkLocations = new Map();
  for (const c of chunks) if (!at.has(c.sha256)) at.set(c.sha256, c.offset);
  return at;
}

const headerOf = (key: ChunkCacheKey, entries: number) =>
  JSON.stringify({
    schema: CHUNK_CACHE_SCHEMA,
    sha256: key.sha256,
    length: key.length,
    chunker: { min: key.chunker.min, avg: key.chunker.avg, max: key.chunker.max },
    entries,
  });

/** The file for `at`, or undefined when it would exceed MAX_CHUNK_CACHE_BYTES. */
export function encodeChunkCache(key: ChunkCacheKey, at: ChunkLocations): Buffer | undefined {
  const head = Buffer.from(`${headerOf(key, at.size)}\n`);
  if (head.length + at.size * ENTRY > MAX_CHUNK_CACHE_BYTES) return undefined;
  const body = Buffer.alloc(at.size * ENTRY);
  let i = 0;
  for (const [sha256, offset] of at) {
    body.writeBigUInt64BE(BigInt(offset), i * ENTRY);
    body.write(sha256, i * ENTRY + 8, "hex");
    i++;
  }
  return Buffer.concat([head, body]);
}

/** The locations in `bytes` if they are a well-formed cache for exactly `key`; else undefined. */
export function decodeChunkCache(bytes: Buffer, key: ChunkCacheKey): ChunkLocations | undefined {
  if (bytes.length > MAX_CHUNK_CACHE_BYTES) return undefined;
  const nl = bytes.indexOf(0x0a);
  if (nl < 0) return undefined;
  let header: { entries?: unknown };
  try {
    header = JSON.parse(bytes.toString("utf8", 0, nl)) as typeof header;
  } catch {
    return undefined;
  }
  const entries = header.entries;
  // The header must be byte for byte the one this key writes: schema, root, length and chunker all match.
  if (typeof entries !== "number" || bytes.toString("utf8", 0, nl) !== headerOf(key, entries))
    return undefined;
  const body = bytes.subarray(nl + 1);
  if (!Number.isSafeInteger(entries) || entries < 0 || body.length !== entries * ENTRY) return undefined;
  const at: ChunkLocations = new Map();
  for (let i = 0; i < entries; i++) {
    const offset = Number(body.readBigUInt64BE(i * ENTRY));
    if (offset >= key.length) return undefined;
    at.set(body.toString("hex", i * ENTRY + 8, (i + 1) * ENTRY), offset);
  }
  return at;
}
