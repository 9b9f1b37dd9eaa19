/** Hashing byte ranges of files and block devices. */
import { createHash } from "node:crypto";
import type { FileHandle } from "node:fs/promises";
import { EosError } from "../core/errors.ts";

const BLOCK = 1024 * 1024;

/** Reads a byte range in blocks, reading the next block while `sink` sees the current one. */
export async function readRange(
  handle: FileHandle,
  offset: number,
  length: number,
  /** Each block read, with its offset in the range; valid only until it returns. */
  sink: (bytes: Buffer, at: number) => void,
): Promise<void> {
  const buffers = [Buffer.allocUnsafe(BLOCK), Buffer.allocUnsafe(BLOCK)];
  const readAt = async (buffer: Buffer, at: number): Promise<number> => {
    const want = Math.min(BLOCK, length - at);
    let got = 0;
    while (got < want) {
      const { bytesRead } = await handle.read(buffer, got, want - got, offset + at + got);
      if (bytesRead === 0) throw new EosError("TRUNCATED", `the slot ends at ${at + got} of ${length} bytes`);
      got += bytesRead;
    }
    return got;
  };
  let at = 0;
  let turn = 0;
  let pending = length > 0 ? readAt(buffers[0] as Buffer, 0) : undefined;
  while (pending) {
    const got = await pending;
    const current = buffers[turn] as Buffer;
    at += got;
    turn ^= 1;
    pending = at < length ? readAt(buffers[turn] as Buffer, at) : undefined;
    sink(current.subarray(0, got), at - got);
  }
}

/** sha256 of a byte range, reading the next block while hashing the current one. */
export async function hashRange(
  handle: FileHandle,
  offset: number,
  length: number,
  onBytes?: (n: number) => void,
  /** Sees each block read, with its offset in the range (before it is hashed). */
  onBlock?: (bytes: Buffer, at: number) => void,
): Promise<string> {
  const hash = createHash("sha256");
  await readRange(handle, offset, length, (bytes, at) => {
    onBlock?.(bytes, at);
    hash.update(bytes);
    onBytes?.(bytes.length);
  });
  return hash.digest("hex");
}
