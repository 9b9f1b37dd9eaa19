/**
 * Planning the chunk path of --apply (issue 12 item 2), for a device that
 * has no pair delta from its running root: fetch the root's chunk index,
 * check it against the hash the signed manifest gives for it before reading
 * a field, find the running root's chunks (chunked once per root with the
 * index's own chunker: running-chunks.ts), and, for an exact plan, hash the
 * target slot at the index's boundaries (what a cut-short apply already wrote
 * there counts, so a restart fetches only the rest). A check plans without
 * reading the target slot: its figure is then an upper bound. For a root
 * with a dm-verity tree only the file system's chunks are planned: the
 * device computes the tree from them (core/update/chunk-plan.ts computedTree;
 * the index covers the tree too, for devices that fetch it). Never throws
 * for a missing or lying index: it says why, and the caller takes the full
 * stream.
 */
import { open } from "node:fs/promises";
import type { ByteRange } from "../../core/gpt.ts";
import { errorMessage } from "../../core/errors.ts";
import { streamBytes, type Manifest } from "../../core/manifest.ts";
import { openChunkIndex, type ChunkIndex } from "../../core/update/chunk-index.ts";
import {
  assembledChunks,
  ChunkChecker,
  computedTree,
  planChunkWork,
  type ChunkWork,
  type TreeSpan,
} from "../../core/update/chunk-plan.ts";
import type { Chunk } from "../../core/update/chunker.ts";
import { hashRange } from "../hash.ts";
import type { Context } from "../context.ts";
import { runningChunks } from "./running-chunks.ts";
import type { UpdateSource } from "./source.ts";

export type ChunkPlan = {
  path: "chunks";
  index: ChunkIndex;
  /** What the device computes after the chunks have landed, instead of fetching it. */
  tree: TreeSpan | undefined;
  work: ChunkWork;
  /** Bytes of the chunk index itself (downloaded while planning). */
  indexBytes: number;
  /** The target slot was read: `work` counts what it holds. Else nothing counts as held (an upper bound). */
  exact: boolean;
};

/** Which of `chunks` (the index's, from its first) the target slot holds already. */
async function heldChunks(disk: string, slot: ByteRange, chunks: readonly Chunk[]): Promise<boolean[]> {
  const checker = new ChunkChecker(chunks);
  const last = chunks[chunks.length - 1];
  const end = last ? last.offset + last.size : 0;
  const handle = await open(disk, "r");
  try {
    await hashRange(handle, slot.offset, end, undefined, (bytes) => checker.push(bytes));
  } finally {
    await handle.close();
  }
  return checker.matches;
}

export async function planChunks(o: {
  ctx: Context;
  source: UpdateSource;
  manifest: Manifest;
  disk: string;
  running: ByteRange | undefined;
  /** sha256 of the running slot's first `runningBytes` bytes. */
  runningSha: string | undefined;
  runningBytes: number;
  target: ByteRange | undefined;
  /** Read the target slot for what it holds already (--apply); a check does not. */
  exact: boolean;
}): Promise<ChunkPlan | { none: string }> {
  const ref = o.manifest.partitions.root.chunk_index;
  if (!ref) return { none: "the signed manifest names no chunk index" };
  if (!o.running || !o.target) return { none: "this disk has no second root slot" };
  if (!o.runningSha) return { none: "the running root's hash is not known" };
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
    const have = await runningChunks(o.ctx, {
      disk: o.disk,
      slot: o.running,
      key: { sha256: o.runningSha, length: o.runningBytes, chunker: index.header.chunker },
    });
    const tree = computedTree(o.manifest.partitions.root.verity, index.header.data_bytes);
    const chunks = assembledChunks(index.chunks, tree);
    const held = o.exact ? await heldChunks(o.disk, o.target, chunks) : [];
    const work = planChunkWork(chunks, held, (sha) => have.get(sha));
    return { path: "chunks", index, tree, work, indexBytes: ref.size, exact: o.exact };
  } catch (error) {
    return { none: `the slots could not be read for the chunk path: ${errorMessage(error)}` };
  }
}
