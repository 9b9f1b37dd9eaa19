/**
 * Streams a root into a slot and proves what landed there: writes as fast
 * as the network and the device allow, resumes an interrupted download from
 * where it stopped, then flushes, re-reads the slot from the device and
 * verifies size and sha256 before anyone may point at it. The hash is taken
 * once, over what is on the device, not over what went by on the wire: that
 * is the check that matters, and doing it once keeps --apply close to dd.
 */
import { open, type FileHandle } from "node:fs/promises";
import type { ByteRange } from "../../core/gpt.ts";
import { EosError, errorMessage } from "../../core/errors.ts";
import { crashPoint } from "../crash-point.ts";
import { hashRange } from "../hash.ts";
import type { ProcessRunner } from "../process.ts";
import type { Progress } from "../progress.ts";
import { interrupted, watchTransfer, type TransferLimits, type Watch } from "../watchdog.ts";
import type { StreamKind, UpdateSource } from "./source.ts";

const BLOCK = 1024 * 1024;

export interface WriteSlotOptions {
  disk: string;
  range: ByteRange;
  size: number;
  /** Bytes to download (the manifest's data_bytes); the rest of `size` are zeros the device writes. */
  dataBytes?: number | undefined;
  sha256: string;
  source: UpdateSource;
  kind: StreamKind;
  progress?: Progress;
  retries?: number;
  retryDelayMs?: number;
  log?: (line: string) => void;
  signal?: AbortSignal;
  proc: ProcessRunner;
  /** Bounds on the download: a stall (resumed) and an overall deadline (the whole write fails). */
  limits: TransferLimits;
}

export type { TransferLimits };

/** No retry helps these: a wrong hash, no access, nothing published, out of time, or asked to stop. */
export const FINAL = ["HASH_MISMATCH", "AUTH", "NOT_FOUND", "TIMEOUT", "INTERRUPTED"];

export async function writeFully(
  handle: FileHandle,
  buffer: Buffer,
  length: number,
  position: number,
): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesWritten } = await handle.write(buffer, done, length - done, position + done);
    done += bytesWritten;
  }
}

/**
 * The one check that decides: the slot as the device holds it (re-read past
 * the page cache) has the signed manifest's sha256. Call after datasync.
 */
export async function verifySlot(
  handle: FileHandle,
  o: Pick<WriteSlotOptions, "disk" | "range" | "size" | "sha256" | "proc">,
): Promise<void> {
  await dropCachedPages(handle, o.disk, o.proc);
  const onDisk = await hashRange(handle, o.range.offset, o.size);
  if (onDisk !== o.sha256) throw slotMismatch(onDisk, o.sha256);
}

/** Drops a block device's cached pages, so the next read comes from the device itself. Call after datasync. */
export async function dropCachedPages(handle: FileHandle, disk: string, proc: ProcessRunner): Promise<void> {
  if ((await handle.stat()).isBlockDevice())
    await proc.run(["blockdev", "--flushbufs", disk]).catch(() => undefined);
}

export function slotMismatch(onDisk: string, signed: string, detail = ""): EosError {
  return new EosError(
    "HASH_MISMATCH",
    `the slot holds sha256 ${onDisk} after writing, but the signed manifest says ${signed}${detail}`,
    { hint: "the download was altered or the storage is failing; the slot stays marked invalid" },
  );
}

/** The zero tail: written, not trimmed, so the slot hashes the same on any storage. */
export async function writeZeros(handle: FileHandle, position: number, length: number, block: Buffer) {
  if (length <= 0) return;
  block.fill(0);
  for (let done = 0; done < length;) {
    const take = Math.min(block.length, length - done);
    await writeFully(handle, block, take, position + done);
    done += take;
  }
}

export interface WriteSlotResult {
  /** Download + write + flush, seconds. */
  writeSeconds: number;
  /** Re-read + hash, seconds. */
  verifySeconds: number;
}

/** Waits `ms`, or less when the signal aborts (the loop then stops). */
export function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

export async function writeSlot(options: WriteSlotOptions): Promise<WriteSlotResult> {
  const started = performance.now();
  const { range, size } = options;
  if (size > range.length) {
    throw new EosError("SLOT", `the new root (${size} bytes) does not fit the slot (${range.length} bytes)`);
  }
  const handle = await open(options.disk, "r+");
  try {
    const etag = `"${options.sha256}"`;
    // Two blocks: one fills from the network while the other is being written.
    const blocks = [Buffer.allocUnsafe(BLOCK), Buffer.allocUnsafe(BLOCK)];
    let turn = 0;
    let filled = 0;
    let written = 0; // bytes handed to the device, in order
    let inFlight: Promise<void> | undefined;
    const flush = async (wait: boolean) => {
      if (filled > 0) {
        if (inFlight) {
          await inFlight;
          // A block has landed and the next is about to: the slot is partly written.
          crashPoint("apply:slot-partly-written");
        }
        const block = blocks[turn] as Buffer;
        const length = filled;
        const position = range.offset + written;
        written += length;
        filled = 0;
        turn ^= 1;
        inFlight = writeFully(handle, block, length, position);
      }
      if (wait && inFlight) {
        await inFlight;
        inFlight = undefined;
      }
    };
    // Only the stream's data travels; a source that sends more (no Range) is cut there.
    const dataEnd = Math.min(options.dataBytes ?? size, size);
    const end = dataEnd < size ? dataEnd : undefined;
    let attempt = 0;
    const deadline = Date.now() + options.limits.deadlineMs;
    const what = `download of ${options.kind}`;
    while (written < dataEnd) {
      if (options.signal?.aborted) throw interrupted(what);
      let watch: Watch | undefined;
      try {
        const response = await options.source.openStream(options.kind, written, etag, end);
        watch = watchTransfer(response.stream, {
          minBytes: options.limits.stallBytes,
          windowMs: options.limits.stallMs,
          deadline,
          signal: options.signal,
          what,
        });
        if (response.offset !== written) {
          // The server restarted the stream (another version, or no Range support): start over.
          options.log?.(`server restarted the stream at ${response.offset}; writing from the beginning`);
          written = 0;
        }
        for await (const chunk of response.stream as AsyncIterable<Buffer>) {
          watch.add(chunk.length);
          let at = 0;
          while (at < chunk.length) {
            if (written + filled >= dataEnd) {
              if (end === undefined)
                throw new EosError("HASH_MISMATCH", `the server sent more than the manifest's ${size} bytes`);
              break;
            }
            const take = Math.min(chunk.length - at, BLOCK - filled, dataEnd - written - filled);
            chunk.copy(blocks[turn] as Buffer, filled, at, at + take);
            filled += take;
            at += take;
            options.progress?.add(take);
            if (filled === BLOCK) await flush(false);
          }
          // Leaving the loop destroys the stream: the rest is the zero tail, not worth its bytes.
          if (written + filled >= dataEnd) break;
        }
        await flush(true);
        if (written < dataEnd)
          throw new EosError("TRUNCATED", `stream ended at ${written} of ${dataEnd} bytes`);
      } catch (error) {
        watch?.stop();
        if (options.signal?.aborted) throw interrupted(`${what} (the slot stays marked invalid)`);
        // Everything received so far is kept: write it, then resume after it.
        await flush(true);
        if (error instanceof EosError && FINAL.includes(error.code)) throw error;
        if (Date.now() >= deadline)
          throw new EosError(
            "TIMEOUT",
            `${what}: not finished by its deadline (${written} of ${size} bytes)`,
          );
        attempt++;
        if (attempt > (options.retries ?? 5)) {
          throw error instanceof EosError
            ? error
            : new EosError(
                "TRUNCATED",
                `download broke off at ${written} of ${size} bytes: ${errorMessage(error)}`,
              );
        }
        options.log?.(
          `download interrupted at ${written} of ${size} bytes (${errorMessage(error)}); resuming`,
        );
        await pause((options.retryDelayMs ?? 1000) * 2 ** (attempt - 1), options.signal);
      } finally {
        watch?.stop();
      }
    }
    await writeZeros(handle, range.offset + dataEnd, size - dataEnd, blocks[0] as Buffer);
    await handle.datasync();
    crashPoint("apply:slot-written");
    options.progress?.done();
    const wroteAt = performance.now();
    await verifySlot(handle, options);
    return { writeSeconds: (wroteAt - started) / 1000, verifySeconds: (performance.now() - wroteAt) / 1000 };
  } finally {
    await handle.close();
  }
}
