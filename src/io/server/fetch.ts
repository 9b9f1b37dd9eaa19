/**
 * One image's fetch: the original os-update-daemon's job without loop
 * devices or root. Checks the origin with one conditional request, downloads
 * and decompresses as a stream, verifies signature and partition hashes, and
 * publishes atomically. Any failure leaves the published version as it was.
 */
import { createHash, type KeyObject } from "node:crypto";
import { createWriteStream } from "node:fs";
import { finished, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ServerImage } from "../../core/config.ts";
import { EosError } from "../../core/errors.ts";
import { checkPublishedName } from "../../core/server/published-name.ts";
import {
  decodeManifest,
  decodeSignatures,
  encodeManifest,
  verifyManifestSignature,
  MANIFEST_SCHEMA,
  streamBytes,
  type Manifest,
  type ManifestPartition,
} from "../../core/manifest.ts";
import type { ProcessRunner } from "../process.ts";
import { decompressStream } from "../decompress.ts";
import { hashDiskPartitions } from "../disk-image.ts";
import {
  findPartition,
  partitionRange,
  requirePartition,
  type ByteRange,
  type GptTable,
} from "../../core/gpt.ts";
import { signedChunkIndex } from "../chunk-index-file.ts";
import { makeDeltas, type DeltaEnd } from "./deltas.ts";
import { VERITY_BLOCK } from "../../core/verity.ts";
import type { ImageStore, StreamKind } from "./store.ts";
import type { Lock } from "../lock.ts";
import type { Logger } from "../log.ts";
import { fetchSmall, openOrigin, type Validators } from "../origin.ts";
import type { Progress } from "../progress.ts";
import { watchTransfer, type TransferLimits } from "../watchdog.ts";

export interface FetchState {
  manifest?: Validators;
  image?: Validators;
  vid?: string;
  checked?: string;
}

export type FetchOutcome = { name: string; status: "unchanged" | "published"; version: string | undefined };

export function defaultManifestUrl(imageUrl: string): string {
  return `${imageUrl.replace(/\.(xz|zst|zstd|gz)$/, "")}.manifest.json`;
}

export interface FetchOptions {
  trustedKeys: KeyObject[];
  logger: Logger;
  signal?: AbortSignal;
  now: () => Date;
  progress?: (label: string, total: number | undefined) => Progress;
  proc: ProcessRunner;
  /** Bounds on each origin download (a stall or the deadline fails this image's fetch). */
  limits: TransferLimits;
  /** Takes the image's lock (default the store's): fetch-all adds the fleet's publish lock to it. */
  lock?: (name: string) => Promise<Lock>;
}

async function download(
  url: string,
  rawPath: string,
  validators: Validators | undefined,
  options: FetchOptions,
): Promise<{ status: "unchanged" } | { status: "ok"; sha256: string; validators: Validators }> {
  const origin = await openOrigin(url, {
    ...(validators ? { validators } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  if (origin.status === "unchanged") return { status: "unchanged" };
  const watch = watchTransfer(origin.body, {
    minBytes: options.limits.stallBytes,
    windowMs: options.limits.stallMs,
    deadline: Date.now() + options.limits.deadlineMs,
    signal: options.signal,
    what: `download of ${url}`,
  });
  const counted = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      watch.add(chunk.length);
      cb(null, chunk);
    },
  });
  origin.body.on("error", (error) => counted.destroy(error));
  const hash = createHash("sha256");
  try {
    const { stream } = await decompressStream(options.proc, origin.body.pipe(counted));
    const bar = options.progress?.(`fetch ${url.split("/").pop() ?? url}`, undefined);
    const hashing = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        hash.update(chunk);
        bar?.add(chunk.length);
        cb(null, chunk);
      },
    });
    await pipeline(
      stream,
      hashing,
      createWriteStream(rawPath, { flags: "wx", mode: 0o644, highWaterMark: 1 << 20 }),
      {
        ...(options.signal ? { signal: options.signal } : {}),
      },
    );
    bar?.done();
  } finally {
    watch.stop();
  }
  return { status: "ok", sha256: hash.digest("hex"), validators: origin.validators };
}

/**
 * The image's partition `a` is what the signed `b` describes; where `b` says
 * the rest is zeros, the image has none but zeros there (else every device's
 * full update would fail its hash check).
 */
function samePartition(a: ManifestPartition | undefined, b: ManifestPartition | undefined) {
  return (
    a !== undefined &&
    b !== undefined &&
    a.size === b.size &&
    a.sha256 === b.sha256 &&
    streamBytes(a) <= streamBytes(b)
  );
}

/** The bytes of a root slot before its dm-verity tree, when it has one (src/core/verity.ts). */
function fsBytesOf(manifest: Manifest): number | undefined {
  const verity = manifest.partitions.root.verity;
  return verity ? verity.data_blocks * VERITY_BLOCK : undefined;
}

/** Where the manifest's partitions lie in the image (as PublishedImages.load reads them back). */
function rangesOf(table: GptTable, manifest: Manifest): Partial<Record<StreamKind, ByteRange>> {
  const ranges: Partial<Record<StreamKind, ByteRange>> = {};
  const root = findPartition(table, manifest.partitions.root.label);
  if (root) ranges.root = partitionRange(table, root);
  const fw = manifest.partitions.firmware && findPartition(table, manifest.partitions.firmware.label);
  if (fw) ranges.firmware = partitionRange(table, fw);
  return ranges;
}

/** Older versions a new one gets deltas from (and that the server keeps for that). */
export const DEFAULT_DELTA_FROM = 3;

async function deltasFromKept(
  store: ImageStore,
  name: string,
  dir: string,
  count: number,
  to: DeltaEnd,
  options: FetchOptions,
): Promise<Buffer> {
  const from: DeltaEnd[] = [];
  for (const vid of (await store.history(name)).slice(0, count)) {
    const v = await store.load(name, vid).catch(() => undefined);
    if (v?.ranges.root)
      from.push({
        version: v.manifest.version,
        read: async (range) => {
          const raw = await v.open("raw");
          if (!raw) throw new EosError("IO", `${name} ${v.manifest.version}: its disk image is gone`);
          // The stream reads on after open; the reader closes with it. Not on "close": a reader's
          // stream does not close its shared handle, so it never emits one, and the handle would
          // be left to the garbage collector (DEP0137 in the host running the publish).
          const stream = await raw.stream(range.offset, range.offset + range.length).catch(async (e) => {
            await raw.close();
            throw e;
          });
          finished(stream, () => void raw.close());
          return stream;
        },
        root: v.ranges.root,
        sha256: v.manifest.partitions.root.sha256,
        fsBytes: fsBytesOf(v.manifest),
      });
  }
  return makeDeltas(options.proc, { name, dir, to, from, logger: options.logger, signal: options.signal });
}

export async function fetchAndPublish(
  store: ImageStore,
  image: ServerImage,
  options: FetchOptions,
): Promise<FetchOutcome> {
  const { name } = image;
  const log = options.logger;
  const lock = await (options.lock ? options.lock(name) : store.lock(name));
  try {
    const state = (await store.readState<FetchState>(name)) ?? {};
    const published = await store.current(name).catch(() => undefined);
    const checked = options.now().toISOString();
    const manifestUrl = image.manifest ?? defaultManifestUrl(image.image);
    let manifestBytes: Buffer | undefined;
    let signatureBytes: Buffer | undefined;
    let manifest: Manifest | undefined;
    let manifestValidators: Validators | undefined;

    if (!image.insecure) {
      const res = await fetchSmall(manifestUrl, {
        ...(published && state.manifest ? { validators: state.manifest } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
      });
      if (res.status === "unchanged") {
        await store.writeState(name, { ...state, checked });
        log.info("origin unchanged", { image: name, version: published?.manifest.version });
        return { name, status: "unchanged", version: published?.manifest.version };
      }
      manifestBytes = res.bytes;
      manifestValidators = res.validators;
      const sig = await fetchSmall(
        image.signature ?? `${manifestUrl}.sig`,
        options.signal ? { signal: options.signal } : {},
      );
      if (sig.status !== "ok") throw new EosError("SIGNATURE", `${name}: no signature at the origin`);
      signatureBytes = sig.bytes;
      const keyid = verifyManifestSignature(
        manifestBytes,
        decodeSignatures(signatureBytes, `${name} signature`),
        options.trustedKeys,
      );
      manifest = decodeManifest(manifestBytes, `${name} manifest`);
      // Signed is not enough: it must be a manifest of the image devices following `name` run.
      checkPublishedName(name, manifest);
      log.info("manifest verified", { image: name, version: manifest.version, keyid: keyid.slice(0, 16) });
      if (published && published.manifestBytes.equals(manifestBytes)) {
        await store.writeState(name, { ...state, manifest: manifestValidators, checked });
        log.info("already published", { image: name, version: manifest.version });
        return { name, status: "unchanged", version: manifest.version };
      }
    }

    const staging = await store.stage(name);
    try {
      const got = await download(
        image.image,
        staging.rawPath,
        image.insecure && published ? state.image : undefined,
        options,
      );
      if (got.status === "unchanged") {
        await store.discard(staging);
        await store.writeState(name, { ...state, checked });
        log.info("origin unchanged", { image: name, version: published?.manifest.version });
        return { name, status: "unchanged", version: published?.manifest.version };
      }
      const parts = await hashDiskPartitions(staging.rawPath);
      if (manifest) {
        if (!samePartition(parts.root, manifest.partitions.root)) {
          throw new EosError("HASH_MISMATCH", `${name}: root partition does not match the signed manifest`, {
            hint: `manifest says ${manifest.partitions.root.sha256}, image has ${parts.root.sha256}`,
          });
        }
        if (manifest.partitions.firmware && !samePartition(parts.firmware, manifest.partitions.firmware)) {
          throw new EosError(
            "HASH_MISMATCH",
            `${name}: firmware partition does not match the signed manifest`,
          );
        }
      } else {
        // insecure: true: no signature to check, but devices still get hashes to verify their writes.
        manifest = {
          schema: MANIFEST_SCHEMA,
          name,
          version: options.now().toISOString().replace(/[-:]/g, "").replace("T", ".").slice(0, 15),
          architecture: "unknown",
          created: options.now().toISOString(),
          partitions: parts.firmware ? { root: parts.root, firmware: parts.firmware } : { root: parts.root },
        };
        manifestBytes = encodeManifest(manifest);
        log.warn("publishing an unsigned image (insecure: true)", { image: name });
      }
      const rootRange = partitionRange(
        parts.table,
        requirePartition(parts.table, manifest.partitions.root.label),
      );
      // Made here from the verified image, published only when the signed hash says it is the same.
      const chunks = await signedChunkIndex(staging.rawPath, rootRange, manifest);
      if ("none" in chunks && manifest.partitions.root.chunk_index)
        log.warn("no chunk index published", { image: name, reason: chunks.none });
      const deltaFrom = image.delta_from ?? DEFAULT_DELTA_FROM;
      const deltaIndexBytes =
        deltaFrom > 0
          ? await deltasFromKept(
              store,
              name,
              staging.dir,
              deltaFrom,
              {
                version: manifest.version,
                rawPath: staging.rawPath,
                root: rootRange,
                sha256: manifest.partitions.root.sha256,
                fsBytes: fsBytesOf(manifest),
              },
              options,
            )
          : undefined;
      const vid = await store.publish(
        name,
        staging,
        {
          manifestBytes: manifestBytes as Buffer,
          signatureBytes,
          rawSha256: got.sha256,
          version: manifest.version,
          deltaIndexBytes,
          chunkIndexBytes: "bytes" in chunks ? chunks.bytes : undefined,
          ranges: rangesOf(parts.table, manifest),
        },
        options.signal,
      );
      await store.writeState(name, {
        ...(manifestValidators ? { manifest: manifestValidators } : {}),
        image: got.validators,
        vid,
        checked,
      } satisfies FetchState);
      log.info("published", {
        image: name,
        version: manifest.version,
        root_sha256: manifest.partitions.root.sha256,
      });
      return { name, status: "published", version: manifest.version };
    } catch (error) {
      await store.discard(staging);
      throw error;
    }
  } finally {
    await lock.release();
  }
}
