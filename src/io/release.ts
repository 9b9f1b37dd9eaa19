/**
 * Releasing a disk image: its manifest (name, version, architecture,
 * creation time, and size + sha256 of each updatable partition found by
 * label), in canonical form, with a detached signature by each release key.
 */
import { createHash } from "node:crypto";
import { stat } from "node:fs/promises";
import { basename } from "node:path";
import { EosError } from "../core/errors.ts";
import { findPartition, partitionRange, requirePartition, type GptTable } from "../core/gpt.ts";
import { architectureOfRootType } from "../core/image/arch.ts";
import {
  ROOT_LABEL,
  encodeManifest,
  encodeSignatures,
  signManifest,
  MANIFEST_SCHEMA,
  type Manifest,
} from "../core/manifest.ts";
import type { Context } from "./context.ts";
import { hashDiskPartitions } from "./disk-image.ts";
import { makeChunkIndex } from "./chunk-index-file.ts";
import { atomicWriteFile } from "./files.ts";
import { loadPrivateKey } from "./keys.ts";
import { progress } from "./progress.ts";

const ARCH: Record<string, string> = { x64: "x86_64", arm64: "aarch64", arm: "armv7l", riscv64: "riscv64" };

/** The architecture of this machine, as manifests name it. */
export function hostArchitecture(): string {
  return ARCH[process.arch] ?? process.arch;
}

function slotArchitecture(table: GptTable): string | undefined {
  const slot = findPartition(table, ROOT_LABEL);
  return slot ? architectureOfRootType(slot.typeGuid) : undefined;
}

/** SOURCE_DATE_EPOCH from the environment (seconds since 1970), or undefined when unset. */
export function sourceDateEpoch(env: NodeJS.ProcessEnv): number | undefined {
  const v = env.SOURCE_DATE_EPOCH;
  if (v === undefined || v === "") return undefined;
  if (!/^\d+$/.test(v)) throw new EosError("USAGE", `SOURCE_DATE_EPOCH must be seconds since 1970, got ${v}`);
  return Number(v);
}

/** When a release was made: SOURCE_DATE_EPOCH for reproducible builds, else now. */
export function creationTime(ctx: Context): Date {
  const epoch = sourceDateEpoch(ctx.env);
  return epoch === undefined ? ctx.now() : new Date(epoch * 1000);
}

export function defaultVersion(created: Date): string {
  // A sortable, monotonic default: the creation time, so downgrade checks work without a scheme.
  return created
    .toISOString()
    .replace(/[-:]/g, "")
    .replace("T", ".")
    .replace(/\..*Z$/, "")
    .replace(/Z$/, "");
}

export interface ManifestOptions {
  keys: string[];
  name?: string | undefined;
  version?: string | undefined;
  arch?: string | undefined;
  quiet?: boolean | undefined;
}

/** Writes IMAGE.manifest.json, its signatures IMAGE.manifest.json.sig and the root's chunk index IMAGE.chunks. */
export async function writeManifest(
  ctx: Context,
  image: string,
  options: ManifestOptions,
): Promise<{ manifestPath: string; manifest: Manifest }> {
  const keys = await Promise.all(options.keys.map((k) => loadPrivateKey(k)));
  const st = await stat(image).catch(() => undefined);
  if (!st) throw new EosError("NOT_FOUND", `image ${image} does not exist`);
  const bar = options.quiet
    ? undefined
    : progress(ctx.stderr, `hashing ${basename(image)}`, st.size, { interactive: ctx.interactive });
  const parts = await hashDiskPartitions(image, (n) => bar?.add(n));
  bar?.done();
  const created = creationTime(ctx);
  const manifest: Manifest = {
    schema: MANIFEST_SCHEMA,
    name: options.name ?? basename(image).replace(/\.raw$/, ""),
    version: options.version ?? defaultVersion(created),
    // An EOS disk says what it is for (its slots' GPT type); this machine's is the last resort.
    architecture: options.arch ?? slotArchitecture(parts.table) ?? hostArchitecture(),
    created: created.toISOString(),
    partitions: { root: { ...parts.root, chunk_index: { size: 0, sha256: "" } } },
  };
  const rootRange = partitionRange(parts.table, requirePartition(parts.table, ROOT_LABEL, image));
  const indexBytes = await makeChunkIndex(image, rootRange, manifest);
  const chunkIndex = {
    size: indexBytes.length,
    sha256: createHash("sha256").update(indexBytes).digest("hex"),
  };
  manifest.partitions = {
    root: { ...parts.root, chunk_index: chunkIndex },
    ...(parts.firmware ? { firmware: parts.firmware } : {}),
  };
  let bytes: Buffer;
  try {
    bytes = encodeManifest(manifest);
  } catch (error) {
    throw new EosError("USAGE", `invalid manifest field: ${(error as Error).message.split("\n")[0]}`);
  }
  const manifestPath = `${image}.manifest.json`;
  // The index first: a manifest on disk never names an index that is not there.
  await atomicWriteFile(`${image}.chunks`, indexBytes);
  await atomicWriteFile(manifestPath, bytes);
  await atomicWriteFile(`${manifestPath}.sig`, encodeSignatures(signManifest(bytes, keys)));
  return { manifestPath, manifest };
}
