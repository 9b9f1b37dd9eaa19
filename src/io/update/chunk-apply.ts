/**
 * The chunk path's writing: chunks the running slot holds are copied into
 * the target slot at their offsets (each re-hashed as it is read), the rest
 * come from the published root in few ranged requests, each checked chunk by
 * chunk against the verified index before it is written, straight at its
 * offset (so a restarted apply finds them: chunk-path.ts); a request that
 * breaks off is asked again for the rest of it, a few times. Then, as on
 * every path, the whole slot is hashed against the signed manifest. A root
 * with a dm-verity tree gets its superblock and tree computed from the file
 * system just assembled, as on the xdelta3-verity path, in the same read of
 * the slot that hashes it; when that tree is not the build's, the build's is
 * fetched by range and the slot hashed again. Any failure throws; the caller
 * takes the full stream, the slot stays marked invalid.
 */
import { createHash, type Hash } from "node:crypto";
import { open, type FileHandle } from "node:fs/promises";
import type { ByteRange } from "../../core/gpt.ts";
import { EosError, errorMessage } from "../../core/errors.ts";
import type { Chunk } from "../../core/update/chunker.ts";
import { planChunkWork, type ChunkFetch, type TreeSpan } from "../../core/update/chunk-plan.ts";
import { VERITY_BLOCK, verityRootHash } from "../../core/verity.ts";
import { crashPoint } from "../crash-point.ts";
import { readRange } from "../hash.ts";
import type { ProcessRunner } from "../process.ts";
import type { Progress } from "../progress.ts";
import { interrupted, watchWithLimits, type TransferLimits } from "../watchdog.ts";
import type { ChunkPlan } from "./chunk-path.ts";
import {
  dropCachedPages,
  FINAL,
  pause,
  slotMismatch,
  verifySlot,
  writeFully,
  writeZeros,
  type WriteSlotResult,
} from "./slot-writer.ts";
import type { UpdateSource } from "./source.ts";
import { verityTailOf } from "./verity-stream.ts";

export interface ChunkWrite {
  plan: ChunkPlan;
  source: UpdateSource;
  disk: string;
  running: ByteRange;
  target: ByteRange;
  size: number;
  sha256: string;
  proc: ProcessRunner;
  limits: TransferLimits;
  signal?: AbortSignal | undefined;
  /** Counts downloaded bytes. */
  progress?: Progress | undefined;
  /** First pause before a broken-off range is asked for again (doubles each time). */
  retryDelayMs?: number | undefined;
  log?: ((line: string) => void) | undefined;
  /** Says what happened to the dm-verity tree when the one computed here was not the build's. */
  say?: ((line: string) => void) | undefined;
}

/** A ranged request that breaks off is asked again for what it still lacks, this often, before the path fails. */
export const RANGE_RETRIES = 3;

const sha = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

async function readFully(handle: FileHandle, buffer: Buffer, length: number, position: number) {
  for (let got = 0; got < length;) {
    const { bytesRead } = await handle.read(buffer, got, length - got, position + got);
    if (bytesRead === 0) throw new EosError("TRUNCATED", `the running slot ends at ${position + got}`);
    got += bytesRead;
  }
}

/**
 * One request: exactly `f.end - f.start` bytes from `f.start`. Each chunk is
 * checked against the index as soon as its bytes are in, and handed to
 * `land` (written at its offset), so a kill mid-request keeps what came.
 */
async function fetchRange(
  o: ChunkWrite,
  f: ChunkFetch,
  buffer: Buffer,
  land: (chunk: Chunk, bytes: Buffer) => Promise<void>,
  /** How many of `f.chunks` have landed, for a retry. */
  landed: { chunks: number },
): Promise<void> {
  const length = f.end - f.start;
  const etag = `"${o.sha256}"`;
  const response = await o.source.openStream("root", f.start, etag, f.end);
  if (response.offset !== f.start) {
    response.stream.destroy();
    throw new EosError(
      "DELTA",
      `the server did not honour the range request (it sent the root from byte ${response.offset}, not ${f.start})`,
    );
  }
  const what = `download of bytes ${f.start}-${f.end} of the root`;
  const watch = watchWithLimits(response.stream, o.limits, what, o.signal);
  let filled = 0;
  let next = 0;
  try {
    for await (const piece of response.stream as AsyncIterable<Buffer>) {
      watch.add(piece.length);
      const take = Math.min(piece.length, length - filled);
      piece.copy(buffer, filled, 0, take);
      filled += take;
      o.progress?.add(take);
      for (let c = f.chunks[next]; c && c.offset + c.size - f.start <= filled; c = f.chunks[++next]) {
        const bytes = buffer.subarray(c.offset - f.start, c.offset - f.start + c.size);
        if (sha(bytes) !== c.sha256)
          throw new EosError(
            "HASH_MISMATCH",
            `the server's root at byte ${c.offset} (${c.size} bytes) does not match the signed chunk index`,
          );
        await land(c, bytes);
        landed.chunks = next + 1;
      }
      if (filled === length) break;
    }
  } finally {
    watch.stop();
    response.stream.destroy();
  }
  if (o.signal?.aborted) throw interrupted(what);
  if (filled < length) throw new EosError("TRUNCATED", `${what}: it ended after ${filled} bytes`);
}

/**
 * fetchRange, and when the request breaks off (a reset, a stall, a short
 * body) the same again from the first chunk that has not landed: the chunks
 * before it are written already. A wrong hash, a server without Range, or
 * running out of time is final.
 */
async function fetchRangeRetrying(
  o: ChunkWrite,
  f: ChunkFetch,
  buffer: Buffer,
  land: (chunk: Chunk, bytes: Buffer) => Promise<void>,
): Promise<void> {
  let rest = f;
  for (let attempt = 1; ; attempt++) {
    const landed = { chunks: 0 };
    try {
      return await fetchRange(o, rest, buffer, land, landed);
    } catch (error) {
      if (o.signal?.aborted) throw interrupted("the chunk path");
      const final = error instanceof EosError && (FINAL.includes(error.code) || error.code === "DELTA");
      if (final || attempt > RANGE_RETRIES) throw error;
      const chunks = rest.chunks.slice(landed.chunks);
      const first = chunks[0];
      if (!first) return;
      rest = { start: first.offset, end: rest.end, chunks };
      o.log?.(
        `the request for bytes ${f.start}-${f.end} of the root broke off (${errorMessage(error)}); asking again for ${rest.start}-${rest.end}`,
      );
      await pause((o.retryDelayMs ?? 1000) * 2 ** (attempt - 1), o.signal);
    }
  }
}

/** Bytes [tree.offset, size) of the slot, read back from the device, added to `slot`: its sha256. */
async function hashFromTree(o: ChunkWrite, handle: FileHandle, tree: TreeSpan, slot: Hash): Promise<string> {
  await dropCachedPages(handle, o.disk, o.proc);
  await readRange(handle, o.target.offset + tree.offset, o.size - tree.offset, (bytes) => slot.update(bytes));
  return slot.digest("hex");
}

/**
 * The build's superblock and tree, fetched by range from the index (it
 * covers the whole stream) and written over the computed ones. The chunk
 * that holds the file system's last bytes is fetched whole (its hash covers
 * both sides), but only its bytes past the file system are written: those
 * before were hashed already, and must stay the bytes that were.
 */
async function fetchTree(o: ChunkWrite, handle: FileHandle, tree: TreeSpan): Promise<number> {
  const work = planChunkWork(
    o.plan.index.chunks.filter((c) => c.offset + c.size > tree.offset),
    [],
    () => undefined,
  );
  o.say?.(`fetching the build's dm-verity tree: ${work.fetchBytes} bytes in ${work.fetches.length} ranges`);
  const buffer = Buffer.allocUnsafe(Math.max(...work.fetches.map((f) => f.end - f.start)));
  const land = async (chunk: Chunk, bytes: Buffer) => {
    const skip = Math.max(0, tree.offset - chunk.offset);
    await writeFully(handle, bytes.subarray(skip), chunk.size - skip, o.target.offset + chunk.offset + skip);
  };
  // Its bytes are not in the planned download the progress counts.
  for (const f of work.fetches) await fetchRangeRetrying({ ...o, progress: undefined }, f, buffer, land);
  await handle.datasync();
  return work.fetchBytes;
}

/**
 * A root with a dm-verity tree: its superblock and tree are computed from
 * the file system just assembled and written, and the slot verified, in one
 * read of the slot. The file system is read back from the device (after
 * datasync and dropping cached pages): those bytes feed both the tree's
 * leaves and the slot's sha256. Then the computed superblock and tree are
 * written, and they and the zero tail read back and hashed on: every hashed
 * byte comes from the device, as in verifySlot, so the guarantee is the
 * same. Re-reading the tree costs its bytes (under 1% of the file system);
 * hashing the buffer written instead would trust the write. A tree computed
 * otherwise than the build's (the root hash, or the slot's sha256, is not the
 * signed one) is replaced by the build's, fetched, and the rest hashed again
 * from the state after the file system. Returns the tree bytes fetched.
 */
async function writeTreeAndVerify(o: ChunkWrite, handle: FileHandle, tree: TreeSpan): Promise<number> {
  await dropCachedPages(handle, o.disk, o.proc);
  const slot = createHash("sha256");
  const computed = await verityTailOf(handle, o.target.offset, tree.record.data_blocks, slot);
  const afterFileSystem = slot.copy();
  // The top level is the block after the superblock; its sha256 is the root hash.
  const rootHash = verityRootHash(computed.subarray(VERITY_BLOCK, 2 * VERITY_BLOCK));
  const short = (hex: string) => `${hex.slice(0, 16)}…`;
  let why = `the dm-verity tree computed here has root hash ${short(rootHash)}, the signed manifest says ${short(tree.record.root_hash)}`;
  if (rootHash === tree.record.root_hash) {
    await writeFully(handle, computed, computed.length, o.target.offset + tree.offset);
    await handle.datasync();
    crashPoint("apply:slot-written");
    const onDisk = await hashFromTree(o, handle, tree, slot);
    if (onDisk === o.sha256) return 0;
    why = `the slot with the dm-verity tree computed here holds sha256 ${short(onDisk)}, the signed manifest says ${short(o.sha256)}`;
  }
  o.say?.(why);
  const fetched = await fetchTree(o, handle, tree);
  const onDisk = await hashFromTree(o, handle, tree, afterFileSystem);
  if (onDisk !== o.sha256)
    throw slotMismatch(
      onDisk,
      o.sha256,
      ` (its dm-verity superblock and tree computed on this device from the file system's ${tree.record.data_blocks} blocks, then the build's fetched)`,
    );
  o.say?.(`the slot verifies with the build's dm-verity tree (${fetched} bytes fetched)`);
  return fetched;
}

export interface ChunkWriteResult extends WriteSlotResult {
  /** Bytes of the build's dm-verity tree fetched after the one computed here failed. */
  treeFetched: number;
}

export async function writeSlotFromChunks(o: ChunkWrite): Promise<ChunkWriteResult> {
  const started = performance.now();
  const { work, index } = o.plan;
  const handle = await open(o.disk, "r+");
  try {
    const largest = Math.max(index.header.chunker.max, ...work.fetches.map((f) => f.end - f.start));
    const buffer = Buffer.allocUnsafe(largest);
    let landed = 0;
    const land = async (chunk: Chunk, bytes: Buffer) => {
      // Chunks have landed and the next is about to: the slot is partly written.
      if (landed++ > 0) crashPoint("apply:slot-partly-written");
      await writeFully(handle, bytes, chunk.size, o.target.offset + chunk.offset);
    };
    for (const { chunk, from } of work.copies) {
      if (o.signal?.aborted) throw interrupted("the chunk path");
      const bytes = buffer.subarray(0, chunk.size);
      await readFully(handle, bytes, chunk.size, o.running.offset + from);
      // The running slot is read-only, but storage rots: a chunk is only copied as the index says it.
      if (sha(bytes) !== chunk.sha256)
        throw new EosError("HASH_MISMATCH", `the running slot's copy of a chunk at ${from} changed`);
      await land(chunk, bytes);
    }
    for (const f of work.fetches) await fetchRangeRetrying(o, f, buffer, land);
    const tree = o.plan.tree;
    // The build writes nothing after the tree: the zero tail starts where it ends.
    const end = tree ? tree.offset + tree.bytes : index.header.data_bytes;
    await writeZeros(handle, o.target.offset + end, o.size - end, buffer);
    await handle.datasync();
    o.progress?.done();
    const wroteAt = performance.now();
    let treeFetched = 0;
    if (tree) treeFetched = await writeTreeAndVerify(o, handle, tree);
    else {
      crashPoint("apply:slot-written");
      await verifySlot(handle, {
        disk: o.disk,
        range: o.target,
        size: o.size,
        sha256: o.sha256,
        proc: o.proc,
      });
    }
    const verifySeconds = (performance.now() - wroteAt) / 1000;
    return { writeSeconds: (wroteAt - started) / 1000, verifySeconds, treeFetched };
  } finally {
    await handle.close();
  }
}
