/**
 * Streams a root into a slot: hashes while writing, resumes an interrupted
 * download from where it stopped, then re-reads what is on the slot and
 * verifies size and sha256 before anyone may point at it.
 */
import { createHash } from "node:crypto";
import { execFile } from "node:child_process";
import { open } from "node:fs/promises";
import { promisify } from "node:util";
import type { ByteRange } from "../core/gpt.ts";
import { EosError, errorMessage } from "../core/errors.ts";
import { hashRange } from "./files.ts";
import type { Progress } from "./progress.ts";
import type { StreamKind, UpdateSource } from "./update-source.ts";

const execFileP = promisify(execFile);
const BLOCK = 4 * 1024 * 1024;

export interface WriteSlotOptions {
  disk: string;
  range: ByteRange;
  size: number;
  sha256: string;
  source: UpdateSource;
  kind: StreamKind;
  progress?: Progress;
  retries?: number;
  retryDelayMs?: number;
  log?: (line: string) => void;
  signal?: AbortSignal;
}

export async function writeSlot(options: WriteSlotOptions): Promise<void> {
  const { range, size } = options;
  if (size > range.length) {
    throw new EosError("SLOT", `the new root (${size} bytes) does not fit the slot (${range.length} bytes)`);
  }
  const handle = await open(options.disk, "r+");
  try {
    let hash = createHash("sha256");
    let written = 0;
    let attempt = 0;
    const etag = `"${options.sha256}"`;
    const block = Buffer.allocUnsafe(BLOCK);
    let filled = 0;
    const flush = async () => {
      if (filled === 0) return;
      let done = 0;
      while (done < filled) {
        const { bytesWritten } = await handle.write(
          block,
          done,
          filled - done,
          range.offset + written + done,
        );
        done += bytesWritten;
      }
      written += filled;
      filled = 0;
    };
    while (written < size) {
      options.signal?.throwIfAborted();
      try {
        const response = await options.source.openStream(options.kind, written, etag);
        if (response.offset !== written) {
          // The server restarted the stream (another version, or no Range support): start over.
          options.log?.(`server restarted the stream at ${response.offset}; writing from the beginning`);
          hash = createHash("sha256");
          written = 0;
        }
        for await (const chunk of response.stream as AsyncIterable<Buffer>) {
          let at = 0;
          while (at < chunk.length) {
            if (written + filled >= size)
              throw new EosError("HASH_MISMATCH", `the server sent more than the manifest's ${size} bytes`);
            const take = Math.min(chunk.length - at, BLOCK - filled, size - written - filled);
            chunk.copy(block, filled, at, at + take);
            hash.update(chunk.subarray(at, at + take));
            filled += take;
            at += take;
            options.progress?.add(take);
            if (filled === BLOCK) {
              options.signal?.throwIfAborted();
              await flush();
            }
          }
        }
        await flush();
        if (written < size) throw new EosError("TRUNCATED", `stream ended at ${written} of ${size} bytes`);
      } catch (error) {
        if (options.signal?.aborted) throw new EosError("IO", "interrupted: the slot stays marked invalid");
        // Everything hashed so far is kept: write it, then resume after it.
        await flush();
        if (
          error instanceof EosError &&
          (error.code === "HASH_MISMATCH" || error.code === "AUTH" || error.code === "NOT_FOUND")
        ) {
          throw error;
        }
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
        await new Promise((r) => setTimeout(r, (options.retryDelayMs ?? 1000) * 2 ** (attempt - 1)));
      }
    }
    await handle.datasync();
    options.progress?.done();
    const streamed = hash.digest("hex");
    if (streamed !== options.sha256) {
      throw new EosError(
        "HASH_MISMATCH",
        `the downloaded root has sha256 ${streamed}, the signed manifest says ${options.sha256}`,
      );
    }
    // Drop the block device's cached pages so the re-read comes from the device itself.
    if ((await handle.stat()).isBlockDevice())
      await execFileP("blockdev", ["--flushbufs", options.disk]).catch(() => undefined);
    const onDisk = await hashRange(handle, range.offset, size);
    if (onDisk !== options.sha256) {
      throw new EosError(
        "HASH_MISMATCH",
        `the slot reads back with sha256 ${onDisk}, expected ${options.sha256}`,
        {
          hint: "the storage may be failing",
        },
      );
    }
  } finally {
    await handle.close();
  }
}
