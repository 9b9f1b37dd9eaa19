/**
 * Streaming decompression by content, not by file name: origins are not
 * always honest about suffixes. Node 20 has no xz or zstd in zlib, so the
 * Debian `xz` and `zstd` programs do the work on a pipe; gzip stays in-process.
 */
import { Readable, Transform } from "node:stream";
import { createGunzip } from "node:zlib";
import { EosError } from "../core/errors.ts";
import { pipeThrough, type ProcessRunner } from "./process.ts";

export type Compression = "xz" | "zstd" | "gzip" | "none";

export function sniffCompression(head: Buffer): Compression {
  if (head.length >= 6 && head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])))
    return "xz";
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return "zstd";
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return "gzip";
  return "none";
}

async function peek(input: Readable, want: number): Promise<{ head: Buffer; rest: Readable }> {
  const chunks: Buffer[] = [];
  let have = 0;
  const iterator = input[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  while (have < want) {
    const next = await iterator.next();
    if (next.done) break;
    chunks.push(next.value);
    have += next.value.length;
  }
  const head = Buffer.concat(chunks);
  async function* replay(): AsyncGenerator<Buffer> {
    if (head.length > 0) yield head;
    for (;;) {
      const next = await iterator.next();
      if (next.done) return;
      yield next.value;
    }
  }
  return { head, rest: Readable.from(replay(), { objectMode: false }) };
}

function external(proc: ProcessRunner, program: "xz" | "zstd", input: Readable): Readable {
  return pipeThrough(proc, [program, "-d", "-c", "-q"], {
    input,
    fail: (code, stderr) => new EosError("DECOMPRESS", `${program}: ${stderr || `exit ${code}`}`),
    notStarted: (error) =>
      new EosError("DECOMPRESS", `cannot run ${program}: ${error.message}`, { hint: `install ${program}` }),
  });
}

/** Returns the decompressed stream and what compression was found. */
export async function decompressStream(
  proc: ProcessRunner,
  input: Readable,
): Promise<{ stream: Readable; compression: Compression }> {
  const { head, rest } = await peek(input, 6);
  const compression = sniffCompression(head);
  switch (compression) {
    case "xz":
    case "zstd":
      return { stream: external(proc, compression, rest), compression };
    case "gzip": {
      const gunzip = createGunzip();
      rest.on("error", (error) => gunzip.destroy(error));
      const wrapped = new Transform({
        transform(chunk, _enc, cb) {
          cb(null, chunk);
        },
      });
      gunzip.on("error", (error) =>
        wrapped.destroy(new EosError("DECOMPRESS", `gzip: ${(error as Error).message}`)),
      );
      return { stream: rest.pipe(gunzip).pipe(wrapped), compression };
    }
    default:
      return { stream: rest, compression };
  }
}
