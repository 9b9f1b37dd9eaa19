/**
 * Reading a small answer (a manifest, a signature, a config) into memory
 * with a bound: a peer that sends more is cut off, never buffered whole.
 */
import type { Readable } from "node:stream";
import { EosError, type ErrorCode } from "../core/errors.ts";

export async function readBounded(
  stream: Readable,
  max: number,
  what: string,
  code: ErrorCode = "MANIFEST",
): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > max) {
      stream.destroy();
      throw new EosError(code, `${what}: larger than ${max} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}
