/**
 * The chunks of the running root, read from the slot at most once per root:
 * the slot is read-only and named by its sha256, so the list is kept in the
 * device's state directory (core/update/chunk-cache.ts says why a bad file is
 * only ignored). Checks run on a timer; without this each one would chunk
 * hundreds of MiB just to say how much an update would download.
 */
import { mkdir, open, readFile, stat } from "node:fs/promises";
import { dirname } from "node:path";
import type { ByteRange } from "../../core/gpt.ts";
import {
  decodeChunkCache,
  encodeChunkCache,
  locateChunks,
  MAX_CHUNK_CACHE_BYTES,
  type ChunkCacheKey,
  type ChunkLocations,
} from "../../core/update/chunk-cache.ts";
import { ChunkHasher } from "../../core/update/chunker.ts";
import type { Context } from "../context.ts";
import { atomicWriteFile } from "../files.ts";
import { hashRange } from "../hash.ts";
import { deviceStatePath } from "./state-path.ts";

/** One file, replaced when the running root changes: its size stays bounded by one root's chunks. */
const CACHE_FILE = "eos/running-chunks.bin";

export const runningChunksPath = (ctx: Context) => deviceStatePath(ctx, CACHE_FILE);

async function readCache(path: string, key: ChunkCacheKey): Promise<ChunkLocations | undefined> {
  try {
    if ((await stat(path)).size > MAX_CHUNK_CACHE_BYTES) return undefined;
    return decodeChunkCache(await readFile(path), key);
  } catch {
    return undefined; // none yet, or unreadable: chunk the slot
  }
}

/**
 * Where each chunk of the running slot's first `key.length` bytes first
 * occurs. `key.sha256` must be the sha256 of exactly those bytes.
 */
export async function runningChunks(
  ctx: Context,
  o: { disk: string; slot: ByteRange; key: ChunkCacheKey },
): Promise<ChunkLocations> {
  const path = await runningChunksPath(ctx);
  const cached = await readCache(path, o.key);
  if (cached) return cached;
  const hasher = new ChunkHasher(o.key.chunker);
  const handle = await open(o.disk, "r");
  let sha256: string;
  try {
    sha256 = await hashRange(handle, o.slot.offset, o.key.length, undefined, (bytes) => hasher.push(bytes));
  } finally {
    await handle.close();
  }
  const at = locateChunks(hasher.end());
  // Kept under the hash of the bytes actually chunked, so it can only ever be found for them.
  const bytes = encodeChunkCache({ ...o.key, sha256 }, at);
  if (bytes) {
    // A cache that cannot be written costs the next check a read, not this one its answer.
    await mkdir(dirname(path), { recursive: true, mode: 0o755 })
      .then(() => atomicWriteFile(path, bytes))
      .catch(() => undefined);
  }
  return at;
}
