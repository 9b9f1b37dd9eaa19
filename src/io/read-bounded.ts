/**
 * Reading a small answer (a manifest, a signature, a config) into memory
 * with bounds: a peer that sends more is cut off, never buffered whole, and
 * one that sends too slowly is cut off at the deadline.
 */
import type { Readable } from "node:stream";
import { EosError, type ErrorCode } from "../core/errors.ts";
import { watchTransfer } from "./watchdog.ts";

/** Small answers arrive in seconds; a minute is generous for a slow link. */
export const SMALL_ANSWER_DEADLINE_MS = 60_000;

export async function readBounded(
  stream: Readable,
  max: number,
  what: string,
  code: ErrorCode = "MANIFEST",
  options: { deadlineMs?: number; signal?: AbortSignal | undefined } = {},
): Promise<Buffer> {
  const deadlineMs = options.deadlineMs ?? SMALL_ANSWER_DEADLINE_MS;
  const watch = watchTransfer(stream, {
    minBytes: 0,
    windowMs: deadlineMs,
    deadline: Date.now() + deadlineMs,
    signal: options.signal,
    what,
  });
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > max) {
        stream.destroy();
        throw new EosError(code, `${what}: larger than ${max} bytes`);
      }
      chunks.push(chunk);
    }
  } finally {
    watch.stop();
  }
  return Buffer.concat(chunks);
}
