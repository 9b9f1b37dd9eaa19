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
import { open, readFile } from "node:fs/promises";
import type { ByteRange } from "../../core/gpt.ts";
import { EosError, errorMessage } from "../../core/errors.ts";
import {
  decodeDeltaIndex,
  MAX_DELTA_BYTES,
  pickDelta,
  xdelta3DecodeArgv,
  type DeltaEntry,
} from "../../core/update/delta-index.ts";
import type { Manifest } from "../../core/manifest.ts";
import type { ProcessRunner } from "../process.ts";
import { crashPoint } from "../crash-point.ts";
import { findInPath } from "../files.ts";
import type { Progress } from "../progress.ts";
import { interrupted, watchWithLimits, type TransferLimits } from "../watchdog.ts";
import { verifySlot, writeFully, writeZeros, type WriteSlotResult } from "./slot-writer.ts";
import type { UpdateSource } from "./source.ts";
import { squashfsBytesUsed, VERITY_BLOCK, verityLayout, type VerityRecord } from "../../core/verity.ts";
import { verityTailOf } from "./verity-stream.ts";

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
    return {
      path: "full",
      reason: `the delta (${picked.size} bytes) is larger than ${MAX_DELTA_BYTES} bytes`,
    };
  if (!findInPath("xdelta3", env)) return { path: "full", reason: "xdelta3 is not installed" };
  return { path: "delta", delta: picked };
}

/** Runs `fn` with the range of `disk` as a loop device (read-only unless `writable`). */
async function withLoopDevice<T>(
  proc: ProcessRunner,
  disk: string,
  range: ByteRange,
  writable: boolean,
  fn: (device: string) => Promise<T>,
): Promise<T> {
  const { stdout } = await proc.run(
    [
      "losetup",
      "--find",
      "--show",
      ...(writable ? [] : ["--read-only"]),
      "--offset",
      String(range.offset),
      "--sizelimit",
      String(range.length),
      disk,
    ],
    { code: "SLOT", what: `a loop device over the ${writable ? "target" : "running"} slot` },
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
/** The progress label of its decode into the target slot (bytes of the slot written). */
export const DELTA_DECODE = "delta decode";

/**
 * Calls `onPosition` with the file offset of our descriptor `fd` while a
 * child writes through it: the decoder's stdout shares our open file, so its
 * offset is how far the decoder has written into the slot, without its bytes
 * passing through this process. Linux's /proc; elsewhere nothing is seen.
 */
export function watchWrittenOffset(
  fd: number,
  onPosition: (offset: number) => void,
  everyMs = 200,
): () => Promise<void> {
  const read = async () => {
    const info = await readFile(`/proc/self/fdinfo/${fd}`, "utf8").catch(() => "");
    const pos = /^pos:\s+(\d+)$/m.exec(info)?.[1];
    if (pos !== undefined) onPosition(Number(pos));
  };
  let reading: Promise<void> = Promise.resolve();
  const timer = setInterval(() => {
    reading = reading.then(read);
  }, everyMs);
  let stopped: Promise<void> | undefined;
  // Stops once: a last reading sees the final offset; calling it again waits for the same.
  return () =>
    (stopped ??= (async () => {
      clearInterval(timer);
      await reading;
      await read();
    })());
}

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
  // Filled in place: the delta is held once, at the size the index signs (MAX_DELTA_BYTES at most).
  const bytes = Buffer.allocUnsafe(o.delta.size);
  let size = 0;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      watch.add(chunk.length);
      if (size + chunk.length > o.delta.size) {
        stream.destroy();
        throw new EosError("HASH_MISMATCH", `the delta is longer than the index's ${o.delta.size} bytes`);
      }
      chunk.copy(bytes, size);
      size += chunk.length;
      bar?.add(chunk.length);
    }
  } finally {
    watch.stop();
  }
  bar?.done();
  const got = bytes.subarray(0, size);
  const sha256 = createHash("sha256").update(got).digest("hex");
  if (size !== o.delta.size || sha256 !== o.delta.sha256)
    throw new EosError(
      "HASH_MISMATCH",
      `the delta has ${size} bytes with sha256 ${sha256.slice(0, 16)}…, the index says ${o.delta.size} bytes, ${o.delta.sha256.slice(0, 16)}…`,
    );
  return bytes;
}

/** Runs the decoder: the delta on its stdin, its stdout `output` (an open file descriptor at offset 0). */
async function decode(
  o: DeltaWrite,
  delta: Buffer,
  oldRoot: string,
  output: number,
  total: number,
): Promise<void> {
  const started = o.proc.start(xdelta3DecodeArgv(oldRoot), { stdio: ["pipe", output, "pipe"] });
  const stop = () => started.child.kill("SIGTERM");
  o.signal?.addEventListener("abort", stop, { once: true });
  const bar = o.progress?.(DELTA_DECODE, total);
  let shown = 0;
  const watching = watchWrittenOffset(output, (offset) => {
    const now = Math.min(offset, total);
    if (now > shown) bar?.add(now - shown);
    shown = Math.max(shown, now);
  });
  try {
    started.child.stdin?.on("error", () => undefined); // EPIPE when it gives up early
    started.child.stdin?.end(delta);
    const { code, signal } = await started.exited;
    if (o.signal?.aborted) throw interrupted("the delta decode");
    const stderr = started
      .stderr()
      .trim()
      .replace(/\s*\n\s*/g, "; ");
    if (code === -1)
      throw new EosError("DELTA", `cannot run xdelta3: ${stderr}`, { hint: "install xdelta3" });
    if (code !== 0) throw new EosError("DELTA", `xdelta3 failed (exit ${code ?? signal}): ${stderr}`);
    await watching();
    bar?.done();
  } finally {
    await watching();
    o.signal?.removeEventListener("abort", stop);
  }
}

/**
 * Writes the target slot from the delta and verifies it. Throws on failure;
 * INTERRUPTED and TIMEOUT mean stop, anything else means "take the full path".
 * xdelta3 writes the new root straight into the target slot (a loop device
 * over its range), so the slot's bytes never pass through this process: its
 * memory stays what it is on the other paths. An xdelta3-verity delta
 * rebuilds the file system only; its dm-verity tree is computed from what
 * landed, read back in bounded blocks.
 */
export async function writeSlotFromDelta(o: DeltaWrite): Promise<WriteSlotResult> {
  const started = performance.now();
  const fsOnly = o.delta.algorithm === "xdelta3-verity";
  const verity = o.verity;
  if (fsOnly && !verity)
    throw new EosError("DELTA", "an xdelta3-verity delta for a root whose manifest has no dm-verity tree");
  if (o.size > o.target.length)
    throw new EosError(
      "SLOT",
      `the new root (${o.size} bytes) does not fit the slot (${o.target.length} bytes)`,
    );
  const bytes = await downloadDelta(o);
  if (o.signal?.aborted) throw interrupted("the delta path");
  // Such a delta was made from the old slot's file system alone: the decoder's source ends there too.
  const source = fsOnly
    ? { offset: o.running.offset, length: await fileSystemBytes(o.disk, o.running) }
    : o.running;
  // What the decoder writes: the file system (then the tree follows), or the whole root.
  const decoded = fsOnly && verity ? verity.data_blocks * VERITY_BLOCK : o.size;
  if (decoded > o.size)
    throw new EosError("DELTA", "the manifest's dm-verity record claims more than the root");
  o.log(`decoding the delta from ${o.delta.from_version} into the target slot`);
  await withLoopDevice(o.proc, o.disk, source, false, (oldRoot) =>
    withLoopDevice(o.proc, o.disk, { offset: o.target.offset, length: decoded }, true, async (newRoot) => {
      // Its stdout is the target slot itself (the loop device, from its first byte).
      const out = await open(newRoot, "r+");
      try {
        await decode(o, bytes, oldRoot, out.fd, decoded);
        // Through the loop device to the disk before it goes away: the tree and the check read the disk.
        await out.datasync();
      } finally {
        await out.close();
      }
    }),
  );
  const handle = await open(o.disk, "r+");
  try {
    let end = decoded;
    if (fsOnly && verity) {
      const tail = await verityTailOf(handle, o.target.offset, verity.data_blocks);
      if (end + tail.length > o.size)
        throw new EosError(
          "DELTA",
          `the file system and its dm-verity tree do not fit the root's ${o.size} bytes`,
        );
      await writeFully(handle, tail, tail.length, o.target.offset + end);
      end += tail.length;
    }
    await writeZeros(
      handle,
      o.target.offset + end,
      o.size - end,
      Buffer.alloc(Math.min(o.size - end, 1 << 20)),
    );
    await handle.datasync();
    crashPoint("apply:slot-written");
    const wroteAt = performance.now();
    await verifySlot(handle, { disk: o.disk, range: o.target, size: o.size, sha256: o.sha256, proc: o.proc });
    return { writeSeconds: (wroteAt - started) / 1000, verifySeconds: (performance.now() - wroteAt) / 1000 };
  } finally {
    await handle.close();
  }
}
