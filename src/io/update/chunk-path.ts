/**
 * Planning the chunk path of --apply (issue 12 item 2), for a device that
 * has no pair delta from its running root: fetch the root's chunk index,
 * check it against the hash the signed manifest gives for it before reading
 * a field, chunk the running slot with the index's own chunker (streaming,
 * two 4 MiB blocks), and hash the target slot at the index's boundaries (what
 * a cut-short apply already wrote there counts, so a restart fetches only the
 * rest). Never throws for a missing or lying index: it says why, and the
 * caller takes the full stream.
 */
import { open } from "node:fs/promises";
import type { ByteRange } from "../../core/gpt.ts";
import { errorMessage } from "../../core/errors.ts";
import { streamBytes, type Manifest } from "../../core/manifest.ts";
import { openChunkIndex, type ChunkIndex } from "../../core/update/chunk-index.ts";
import { ChunkHasher } from "../../core/update/chunker.ts";
import { ChunkChecker, planChunkWork, type ChunkWork } from "../../core/update/chunk-plan.ts";
import { hashRange } from "../hash.ts";
import type { UpdateSource } from "./source.ts";

export type ChunkPlan = {
  path: "chunks";
  index: ChunkIndex;
  work: ChunkWork;
  /** Bytes of the chunk index itself (downloaded while planning). */
  indexBytes: number;
};

/** Where each chunk hash first occurs in the running slot (its whole range: a chunk may be anywhere). */
async function chunksOf(disk: string, slot: ByteRange, index: ChunkIndex): Promise<Map<string, number>> {
  const hasher = new ChunkHasher(index.header.chunker);
  const handle = await open(disk, "r");
  try {
    await hashRange(handle, slot.offset, slot.length, undefined, (bytes) => hasher.push(bytes));
  } finally {
    await handle.close();
  }
  const at = new Map<string, number>();
  for (const c of hasher.end()) if (!at.has(c.sha256)) at.set(c.sha256, c.offset);
  return at;
}

/** Which of the index's chunks the target slot holds already. */
async function heldChunks(disk: string, slot: ByteRange, index: ChunkIndex): Promise<boolean[]> {
  const checker = new ChunkChecker(index.chunks);
  const handle = await open(disk, "r");
  try {
    await hashRange(handle, slot.offset, index.header.data_bytes, undefined, (bytes) => checker.push(bytes));
  } finally {
    await handle.close();
  }
  return checker.matches;
}

export async function planChunks(o: {
  source: UpdateSource;
  manifest: Manifest;
  disk: string;
  running: ByteRange | undefined;
  target: ByteRange | undefined;
}): Promise<ChunkPlan | { none: string }> {
  const ref = o.manifest.partitions.root.chunk_index;
  if (!ref) return { none: "the signed manifest names no chunk index" };
  if (!o.running || !o.target) return { none: "this disk has no second root slot" };
  if (!o.source.fetchChunkIndex) return { none: "this transport has no chunk index" };
  if (streamBytes(o.manifest.partitions.root) > o.target.length)
    return { none: "the new root does not fit the target slot" };
  let index: ChunkIndex;
  try {
    const bytes = await o.source.fetchChunkIndex(ref.size);
    if (!bytes) return { none: "the server offers no chunk index" };
    index = openChunkIndex(bytes, o.manifest, "the server's chunk index");
  } catch (error) {
    return { none: `the chunk index is not usable: ${errorMessage(error)}` };
  }
  try {
    const have = await chunksOf(o.disk, o.running, index);
    const held = await heldChunks(o.disk, o.target, index);
    const work = planChunkWork(index.chunks, held, (sha) => have.get(sha));
    return { path: "chunks", index, work, indexBytes: ref.size };
  } catch (error) {
    return { none: `the slots could not be read for the chunk path: ${errorMessage(error)}` };
  }
}
