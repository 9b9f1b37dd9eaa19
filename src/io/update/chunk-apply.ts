/**
 * The chunk path's writing: chunks the running slot holds are copied into
 * the target slot at their offsets (each re-hashed as it is read), the rest
 * come from the published root in few ranged requests, each checked chunk by
 * chunk against the verified index before it is written, straight at its
 * offset (so a restarted apply finds them: chunk-path.ts); a request that
 * breaks off is asked again for the rest of it, a few times. A root with a
 * dm-verity tree gets its superblock and tree computed from the file system
 * just assembled, as on the xdelta3-verity path, never downloaded. Then, as
 * on every path, the whole slot is hashed against the signed manifest: a tree
 * computed differently from the build's fails there. Any failure throws; the
 * caller takes the full stream, the slot stays marked invalid.
 */
import { createHash } from "node:crypto";
import { open, type FileHandle } from "node:fs/promises";
import type { ByteRange } from "../../core/gpt.ts";
import { EosError, errorMessage } from "../../core/errors.ts";
import type { Chunk } from "../../core/update/chunker.ts";
import type { ChunkFetch, TreeSpan } from "../../core/update/chunk-plan.ts";
import { VERITY_BLOCK, verityRootHash } from "../../core/verity.ts";
import { crashPoint } from "../crash-point.ts";
import type { ProcessRunner } from "../process.ts";
import type { Progress } from "../progress.ts";
import { interrupted, watchWithLimits, type TransferLimits } from "../watchdog.ts";
import type { ChunkPlan } from "./chunk-path.ts";
import { FINAL, pause, verifySlot, writeFully, writeZeros, type WriteSlotResult } from "./slot-writer.ts";
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

/**
 * Computes the dm-verity superblock and tree from the file system in the
 * target slot and writes them at their place; returns where they end. The
 * root hash is checked against the signed record first, so a wrong tree is
 * named as such rather than as a slot hash mismatch.
 */
async function writeTree(handle: FileHandle, target: ByteRange, tree: TreeSpan): Promise<number> {
  const tail = await verityTailOf(handle, target.offset, tree.record.data_blocks);
  // The top level is the block after the superblock; its sha256 is the root hash.
  const rootHash = verityRootHash(tail.subarray(VERITY_BLOCK, 2 * VERITY_BLOCK));
  if (rootHash !== tree.record.root_hash)
    throw new EosError(
      "HASH_MISMATCH",
      `the dm-verity tree computed from the assembled file system has root hash ${rootHash.slice(0, 16)}…, the signed manifest says ${tree.record.root_hash.slice(0, 16)}…`,
    );
  await writeFully(handle, tail, tail.length, target.offset + tree.offset);
  return tree.offset + tail.length;
}

export async function writeSlotFromChunks(o: ChunkWrite): Promise<WriteSlotResult> {
  const started = performance.now();
  const { work, index } = o.plan;
  const dataBytes = index.header.data_bytes;
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
    const end = tree ? await writeTree(handle, o.target, tree) : dataBytes;
    await writeZeros(handle, o.target.offset + end, o.size - end, buffer);
    await handle.datasync();
    crashPoint("apply:slot-written");
    o.progress?.done();
    const wroteAt = performance.now();
    try {
      await verifySlot(handle, {
        disk: o.disk,
        range: o.target,
        size: o.size,
        sha256: o.sha256,
        proc: o.proc,
      });
    } catch (error) {
      if (!tree || !(error instanceof EosError)) throw error;
      throw new EosError(
        error.code,
        `${error.message} (its dm-verity superblock and tree were computed on this device, from the file system's ${tree.record.data_blocks} blocks)`,
        error.hint ? { hint: error.hint } : {},
      );
    }
    return { writeSeconds: (wroteAt - started) / 1000, verifySeconds: (performance.now() - wroteAt) / 1000 };
  } finally {
    await handle.close();
  }
}
