/**
 * Pair deltas, made when a version is published: for each older version the
 * server still keeps, one xdelta3 file from that version's root partition to
 * the new one. xdelta3 (VCDIFF, RFC 3284) was measured against
 * `zstd --patch-from` on the demo's pair: 317 KB against 469 KB, and its
 * decoder works in a bounded source window (DELTA_WINDOW, used when the delta
 * is made too) with the old root read from the device's own slot, so a
 * device's memory for it does not grow with the slot; zstd would need the
 * whole old root as its window.
 *
 * Between two roots that both carry a dm-verity tree, the delta covers the
 * file systems only ("xdelta3-verity"): the tree is a function of the file
 * system's bytes that the device computes itself, and as sha256s it is
 * incompressible, so sending it would cost most of the delta (1.35 MB
 * against 317 KB on the demo's pair).
 */
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ByteRange } from "../../core/gpt.ts";
import {
  encodeDeltaIndex,
  DELTA_INDEX_SCHEMA,
  MAX_DELTA_BYTES,
  xdelta3EncodeArgv,
  type DeltaEntry,
} from "../../core/update/delta-index.ts";
import { errorMessage } from "../../core/errors.ts";
import type { Logger } from "../log.ts";
import type { ProcessRunner } from "../process.ts";

export interface DeltaEnd {
  version: string;
  /** The disk image, a local file; or, for a version in object storage, `read`. */
  rawPath?: string;
  read?: (range: ByteRange) => Promise<Readable>;
  root: ByteRange;
  sha256: string;
  /** The file system's bytes before the slot's dm-verity tree, when it has one. */
  fsBytes?: number | undefined;
}

export function deltaFileName(fromSha256: string): string {
  return `${fromSha256}.xd3`;
}

async function copyRange(from: DeltaEnd, range: ByteRange, out: string): Promise<void> {
  const source = from.read
    ? await from.read(range)
    : createReadStream(from.rawPath as string, { start: range.offset, end: range.offset + range.length - 1 });
  await pipeline(source, createWriteStream(out, { mode: 0o600 }));
}

async function sha256Of(path: string): Promise<string> {
  const hash = createHash("sha256");
  await pipeline(createReadStream(path), hash);
  return hash.digest("hex");
}

/**
 * Writes `deltas/<from sha256>.xd3` into `dir` for each source, and returns
 * the index (NAME.deltas.json). A source that fails is logged and left out:
 * devices on it take the full stream, the publish goes on.
 */
export async function makeDeltas(
  proc: ProcessRunner,
  o: {
    name: string;
    dir: string;
    to: DeltaEnd;
    from: DeltaEnd[];
    logger: Logger;
    signal?: AbortSignal | undefined;
    /** Larger deltas are not kept (default MAX_DELTA_BYTES, what a device takes). */
    maxBytes?: number;
  },
): Promise<Buffer> {
  const maxBytes = o.maxBytes ?? MAX_DELTA_BYTES;
  const deltas: DeltaEntry[] = [];
  const out = join(o.dir, "deltas");
  const work = join(o.dir, ".delta-work");
  await mkdir(out, { recursive: true });
  await mkdir(work, { recursive: true });
  try {
    const sources = o.from.filter(
      (f, i, all) => f.sha256 !== o.to.sha256 && all.findIndex((g) => g.sha256 === f.sha256) === i,
    );
    const made = new Set<string>();
    const toFile = async (verity: boolean) => {
      const file = join(work, verity ? "to.fs" : "to.root");
      if (!made.has(file)) {
        const range = verity ? { offset: o.to.root.offset, length: o.to.fsBytes as number } : o.to.root;
        await copyRange(o.to, range, file);
        made.add(file);
      }
      return file;
    };
    for (const from of sources) {
      if (o.signal?.aborted) break;
      const target = join(out, deltaFileName(from.sha256));
      const t0 = performance.now();
      const verity = o.to.fsBytes !== undefined && from.fsBytes !== undefined;
      try {
        const to = await toFile(verity);
        const fromRange = verity ? { offset: from.root.offset, length: from.fsBytes as number } : from.root;
        await copyRange(from, fromRange, join(work, "from.root"));
        await proc.run(xdelta3EncodeArgv(join(work, "from.root"), to, target), {
          what: `xdelta3 (delta ${from.version} → ${o.to.version})`,
          hint: "install xdelta3 (apt install xdelta3)",
          ...(o.signal ? { signal: o.signal } : {}),
        });
        const size = (await stat(target)).size;
        if (size > maxBytes) {
          // A device declines it (it holds a delta in memory to check it before use) and takes
          // the chunk path: publishing it would only cost disk and every device a look.
          await rm(target, { force: true });
          o.logger.info("delta not kept", {
            image: o.name,
            from: from.version,
            to: o.to.version,
            bytes: size,
            max_bytes: maxBytes,
            reason: "larger than a device takes: devices on this version take the chunk path",
          });
          continue;
        }
        deltas.push({
          from_sha256: from.sha256,
          from_version: from.version,
          algorithm: verity ? "xdelta3-verity" : "xdelta3",
          size,
          sha256: await sha256Of(target),
        });
        o.logger.info("delta made", {
          image: o.name,
          from: from.version,
          to: o.to.version,
          bytes: size,
          full_bytes: o.to.root.length,
          seconds: Math.round((performance.now() - t0) / 100) / 10,
        });
      } catch (error) {
        await rm(target, { force: true });
        o.logger.warn("no delta", { image: o.name, from: from.version, error: errorMessage(error) });
      }
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return encodeDeltaIndex({
    schema: DELTA_INDEX_SCHEMA,
    name: o.name,
    version: o.to.version,
    to_sha256: o.to.sha256,
    deltas,
  });
}
