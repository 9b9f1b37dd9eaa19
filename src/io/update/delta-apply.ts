/**
 * The delta path of --apply: when the server has a pair delta from the root
 * this device runs, download it (small, bounded, its sha256 checked before
 * the decoder sees a byte), decode it with xdelta3 against the running slot
 * (a read-only loop device over its range) straight into the target slot,
 * and verify the whole slot against the signed manifest like the full path
 * does. Any failure is reported and the caller takes the full stream; the
 * target slot is marked invalid throughout, so nothing unverified can boot.
 */
import { createHash } from "node:crypto";
import { open } from "node:fs/promises";
import { Readable } from "node:stream";
import type { ByteRange } from "../../core/gpt.ts";
import { EosError, errorMessage } from "../../core/errors.ts";
import { decodeDeltaIndex, DELTA_WINDOW, pickDelta, type DeltaEntry } from "../../core/update/delta-index.ts";
import type { Manifest } from "../../core/manifest.ts";
import { pipeThrough, type ProcessRunner } from "../process.ts";
import { findInPath } from "../files.ts";
import type { Progress } from "../progress.ts";
import { interrupted, watchWithLimits, type TransferLimits } from "../watchdog.ts";
import { writeSlot, type WriteSlotResult } from "./slot-writer.ts";
import type { UpdateSource } from "./source.ts";
import { squashfsBytesUsed, verityLayout, type VerityRecord } from "../../core/verity.ts";
import { withVerityTree } from "./verity-stream.ts";

/** A delta bigger than this is not worth holding in memory: the full stream is taken instead. */
export const MAX_DELTA_BYTES = 48 * 1024 * 1024;

export type DeltaPlan = { path: "delta"; delta: DeltaEntry } | { path: "full"; reason: string };

/** Which path an update of this device would take, and why; never throws for a missing delta. */
export async function planDelta(
  source: UpdateSource,
  env: NodeJS.ProcessEnv,
  manifest: Manifest,
  runningSha: string | undefined,
): Promise<DeltaPlan> {
  let indexBytes: Buffer | undefined;
  try {
    indexBytes = await source.fetchDeltaIndex();
  } catch (error) {
    return { path: "full", reason: `the delta index could not be read: ${errorMessage(error)}` };
  }
  if (!indexBytes) return { path: "full", reason: "the server offers no deltas for this version" };
  let picked: ReturnType<typeof pickDelta>;
  try {
    picked = pickDelta(
      decodeDeltaIndex(indexBytes, "the server's delta index"),
      { sha256: runningSha },
      { name: manifest.name, version: manifest.version, sha256: manifest.partitions.root.sha256 },
    );
  } catch (error) {
    return { path: "full", reason: errorMessage(error) };
  }
  if ("none" in picked) return { path: "full", reason: picked.none };
  if (picked.size > MAX_DELTA_BYTES)
    return { path: "full", reason: `the delta (${picked.size} bytes) is larger than ${MAX_DELTA_BYTES}` };
  if (!findInPath("xdelta3", env)) return { path: "full", reason: "xdelta3 is not installed" };
  return { path: "delta", delta: picked };
}

/** Runs `fn` with the range of `disk` as a read-only loop device. */
async function withLoopDevice<T>(
  proc: ProcessRunner,
  disk: string,
  range: ByteRange,
  fn: (device: string) => Promise<T>,
): Promise<T> {
  const { stdout } = await proc.run(
    [
      "losetup",
      "--find",
      "--show",
      "--read-only",
      "--offset",
      String(range.offset),
      "--sizelimit",
      String(range.length),
      disk,
    ],
    { code: "SLOT", what: "a read-only loop device over the running slot" },
  );
  const device = stdout.trim();
  try {
    return await fn(device);
  } finally {
    await proc.run(["losetup", "--detach", device], { check: false });
  }
}

/** The progress label of the delta's download. */
export const DELTA_DOWNLOAD = "delta";

export interface DeltaWrite {
  source: UpdateSource;
  /** The new root's dm-verity record (the manifest's): an xdelta3-verity delta leaves the tree to the device. */
  verity?: VerityRecord | undefined;
  proc: ProcessRunner;
  delta: DeltaEntry;
  disk: string;
  running: ByteRange;
  target: ByteRange;
  size: number;
  sha256: string;
  limits: TransferLimits;
  signal?: AbortSignal | undefined;
  progress?: (label: string, total: number) => Progress;
  log: (line: string) => void;
}

/** Bytes of the squashfs at the start of a slot, padded to dm-verity's blocks: where its tree begins. */
async function fileSystemBytes(disk: string, slot: ByteRange): Promise<number> {
  const handle = await open(disk, "r");
  try {
    const head = Buffer.alloc(96);
    await handle.read(head, 0, head.length, slot.offset);
    const used = squashfsBytesUsed(head);
    if (used === undefined)
      throw new EosError("DELTA", "the running slot holds no squashfs to decode the delta against");
    const { superblockOffset } = verityLayout(used);
    if (superblockOffset > slot.length)
      throw new EosError("DELTA", "the running slot's squashfs claims more than the slot");
    return superblockOffset;
  } finally {
    await handle.close();
  }
}

/** Downloads and checks the delta: its bytes, exactly as the index describes them. */
async function downloadDelta(o: DeltaWrite): Promise<Buffer> {
  const stream = await o.source.openDelta(o.delta.from_sha256);
  const bar = o.progress?.(DELTA_DOWNLOAD, o.delta.size);
  const watch = watchWithLimits(stream, o.limits, "download of the delta", o.signal);
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      watch.add(chunk.length);
      size += chunk.length;
      if (size > o.delta.size) {
        stream.destroy();
        throw new EosError("HASH_MISMATCH", `the delta is longer than the index's ${o.delta.size} bytes`);
      }
      chunks.push(chunk);
      bar?.add(chunk.length);
    }
  } finally {
    watch.stop();
  }
  bar?.done();
  const bytes = Buffer.concat(chunks);
  const sha256 = createHash("sha256").update(bytes).digest("hex");
  if (bytes.length !== o.delta.size || sha256 !== o.delta.sha256)
    throw new EosError(
      "HASH_MISMATCH",
      `the delta has ${bytes.length} bytes with sha256 ${sha256.slice(0, 16)}…, the index says ${o.delta.size} bytes, ${o.delta.sha256.slice(0, 16)}…`,
    );
  return bytes;
}

/**
 * Writes the target slot from the delta and verifies it. Throws on failure;
 * INTERRUPTED and TIMEOUT mean stop, anything else means "take the full path".
 */
export async function writeSlotFromDelta(o: DeltaWrite): Promise<WriteSlotResult> {
  const fsOnly = o.delta.algorithm === "xdelta3-verity";
  const verity = o.verity;
  if (fsOnly && !verity)
    throw new EosError("DELTA", "an xdelta3-verity delta for a root whose manifest has no dm-verity tree");
  const bytes = await downloadDelta(o);
  if (o.signal?.aborted) throw interrupted("the delta path");
  // Such a delta was made from the old slot's file system alone: the decoder's source ends there too.
  const source = fsOnly
    ? { offset: o.running.offset, length: await fileSystemBytes(o.disk, o.running) }
    : o.running;
  return withLoopDevice(o.proc, o.disk, source, async (oldRoot) => {
    let opened = false;
    // The decoder's output is the slot's stream: one pass, no resume (a broken decode falls back).
    const decoded: UpdateSource = {
      ...o.source,
      describe: `xdelta3 delta from ${o.delta.from_version}`,
      async openStream() {
        if (opened) throw new EosError("DELTA", "the delta decode broke off");
        opened = true;
        const stream = pipeThrough(
          o.proc,
          ["xdelta3", "-d", "-c", "-B", String(DELTA_WINDOW), "-s", oldRoot],
          {
            input: Readable.from([bytes]),
            fail: (code, stderr) =>
              new EosError("DELTA", `xdelta3 failed (exit ${code}): ${stderr.replace(/\s*\n\s*/g, "; ")}`),
            notStarted: (error) =>
              new EosError("DELTA", `cannot run xdelta3: ${error.message}`, { hint: "install xdelta3" }),
          },
        );
        if (!fsOnly || !verity) return { stream, offset: 0 };
        const slot = Readable.from(
          withVerityTree(stream as AsyncIterable<Buffer>, verity.data_blocks, o.size),
        );
        // The decoder's failure (its exit status, a missing binary) ends the slot stream with it.
        stream.on("error", (error: Error) => slot.destroy(error));
        return { stream: slot, offset: 0 };
      },
    };
    return writeSlot({
      disk: o.disk,
      range: o.target,
      size: o.size,
      sha256: o.sha256,
      source: decoded,
      kind: "root",
      retries: 0,
      log: o.log,
      signal: o.signal,
      proc: o.proc,
      limits: o.limits,
      ...(o.progress ? { progress: o.progress("slot (from the delta)", o.size) } : {}),
    });
  });
}
