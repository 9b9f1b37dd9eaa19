/**
 * `eos flash IMAGE DEVICE`: writes a disk image (raw, xz, zstd or gzip) to a
 * disk, after the checks of core/image/flash.ts, and proves the write by
 * reading it back. The kernel is the last guard: the disk is opened with
 * O_EXCL, which Linux refuses while anything (a mount, LUKS, LVM, RAID) holds it.
 */
import { createHash } from "node:crypto";
import { constants, createReadStream } from "node:fs";
import { open, readFile, readdir, readlink, realpath, stat, type FileHandle } from "node:fs/promises";
import { basename, join } from "node:path";
import { createInterface } from "node:readline";
import { EosError } from "../../core/errors.ts";
import {
  SYSTEM_MOUNTS,
  describeTarget,
  flashRefusal,
  parseMountInfo,
  parseSwaps,
  refuse,
  type FlashTarget,
} from "../../core/image/flash.ts";
import { decodeManifest, decodeSignatures, verifyManifestSignature } from "../../core/manifest.ts";
import { sysPath, type Context } from "../context.ts";
import { decompressStream, sniffCompression, type Compression } from "../decompress.ts";
import { hashDiskPartitions } from "../disk-image.ts";
import { fileExists } from "../files.ts";
import { hashRange } from "../hash.ts";
import { loadTrustedKeys } from "../keys.ts";
import { formatBytes, progress } from "../progress.ts";
import { interrupted } from "../watchdog.ts";

const BLOCK = 4 * 1024 * 1024;

async function readText(path: string): Promise<string | undefined> {
  return readFile(path, "utf8").then(
    (s) => s.trim(),
    () => undefined,
  );
}

/** The device numbers of a block device, its partitions and whatever is stacked on them (dm, md). */
async function deviceTree(sysBlock: string, dir: string, seen = new Set<string>()): Promise<Set<string>> {
  const dev = await readText(join(dir, "dev"));
  if (!dev || seen.has(dev)) return seen;
  seen.add(dev);
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const entry of entries)
    if (await fileExists(join(dir, entry.name, "partition")))
      await deviceTree(sysBlock, join(dir, entry.name), seen);
  for (const holder of await readdir(join(dir, "holders")).catch(() => []))
    await deviceTree(sysBlock, join(sysBlock, holder), seen);
  return seen;
}

/** What /sys and /proc say about the disk at `path`. */
export async function inspectTarget(ctx: Context, path: string): Promise<FlashTarget> {
  const info = await stat(path).catch((error: NodeJS.ErrnoException) => {
    throw new EosError("NOT_FOUND", `${path}: ${error.code ?? error.message}`, {
      hint: "give the disk's device path, e.g. /dev/sdb (see lsblk)",
    });
  });
  const blank: FlashTarget = {
    path,
    name: basename(path),
    isBlockDevice: info.isBlockDevice(),
    isPartition: false,
    sizeBytes: 0,
    removable: false,
    usb: false,
    readOnly: false,
    model: "",
    inUse: [],
    holdsRunningSystem: false,
  };
  if (!info.isBlockDevice()) return blank;
  const devNumber = `${Math.floor(info.rdev / 256)}:${info.rdev % 256}`;
  const sysBlock = sysPath(ctx, "/sys/class/block");
  const dir = await realpath(sysPath(ctx, `/sys/dev/block/${devNumber}`));
  const name = basename(dir);
  const vendor = (await readText(join(dir, "device/vendor"))) ?? "";
  const model = (await readText(join(dir, "device/model"))) ?? "";
  const backing = await readText(join(dir, "loop/backing_file"));
  const tree = await deviceTree(sysBlock, dir);
  const inUse: string[] = [];
  let holdsRunningSystem = false;
  const mounts = parseMountInfo((await readText(sysPath(ctx, "/proc/self/mountinfo"))) ?? "");
  for (const mount of mounts)
    if (tree.has(mount.device)) {
      inUse.push(mount.mountPoint);
      if (SYSTEM_MOUNTS.includes(mount.mountPoint)) holdsRunningSystem = true;
    }
  for (const swap of parseSwaps((await readText(sysPath(ctx, "/proc/swaps"))) ?? "")) {
    const s = await stat(swap).catch(() => undefined);
    if (s && tree.has(`${Math.floor(s.rdev / 256)}:${s.rdev % 256}`)) inUse.push(`swap ${swap}`);
  }
  return {
    ...blank,
    name,
    isPartition: await fileExists(join(dir, "partition")),
    sizeBytes: Number((await readText(join(dir, "size"))) ?? "0") * 512,
    removable: (await readText(join(dir, "removable"))) === "1",
    usb: (await readlink(join(sysBlock, name)).catch(() => "")).includes("/usb"),
    readOnly: (await readText(join(dir, "ro"))) === "1",
    model: backing ? `loop device on ${backing}` : `${vendor} ${model}`.trim(),
    inUse,
    holdsRunningSystem,
  };
}

/** The image's size once decompressed, when its format says so (gzip's trailer is only mod 2^32). */
async function imageSize(ctx: Context, image: string, compression: Compression): Promise<number | undefined> {
  if (compression === "none") return (await stat(image)).size;
  if (compression === "xz") {
    const r = await ctx.proc.run(["xz", "--robot", "--list", image], { check: false, timeoutMs: 60_000 });
    const totals = r.stdout.split("\n").find((l) => l.startsWith("totals\t"));
    const bytes = Number(totals?.split("\t")[4]);
    return r.code === 0 && Number.isSafeInteger(bytes) ? bytes : undefined;
  }
  if (compression === "zstd") {
    const r = await ctx.proc.run(["zstd", "-l", "-v", image], { check: false, timeoutMs: 60_000 });
    const m = /Decompressed Size:.*\((\d+) B\)/.exec(r.stdout);
    return r.code === 0 && m ? Number(m[1]) : undefined;
  }
  return undefined;
}

async function confirm(ctx: Context, question: string): Promise<boolean> {
  ctx.stderr.write(question);
  const lines = createInterface({ input: ctx.stdin, terminal: false });
  try {
    for await (const line of lines) return line.trim() === "yes";
    return false;
  } finally {
    lines.close();
  }
}

async function writeStream(
  handle: FileHandle,
  input: AsyncIterable<Buffer>,
  target: FlashTarget,
  ctx: Context,
  total: number | undefined,
): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash("sha256");
  const shown = progress(ctx.stderr, `writing ${target.path}`, total, { interactive: ctx.interactive });
  const block = Buffer.allocUnsafe(BLOCK);
  let filled = 0;
  let written = 0;
  const flush = async () => {
    if (written + filled > target.sizeBytes)
      throw new EosError(
        "REFUSED",
        `${target.path}: the image is bigger than the disk (${target.sizeBytes} bytes)`,
        {
          hint: "the disk now holds a partial image: use a bigger disk",
        },
      );
    let at = 0;
    while (at < filled) at += (await handle.write(block, at, filled - at, written + at)).bytesWritten;
    hash.update(block.subarray(0, filled));
    written += filled;
    shown.add(filled);
    filled = 0;
  };
  for await (const chunk of input) {
    if (ctx.signal.aborted) throw interrupted(`flash of ${target.path} (the disk holds a partial image)`);
    let at = 0;
    while (at < chunk.length) {
      const take = Math.min(chunk.length - at, BLOCK - filled);
      chunk.copy(block, filled, at, at + take);
      filled += take;
      at += take;
      if (filled === BLOCK) await flush();
    }
  }
  await flush();
  shown.done();
  return { bytes: written, sha256: hash.digest("hex") };
}

export interface FlashOptions {
  image: string;
  device: string;
  force: boolean;
  yes: boolean;
  /** The image's signed manifest (default: IMAGE.manifest.json next to the image, without .xz/.zst/.gz). */
  manifest?: string;
  /** Release public keys: when given, the manifest's signature is checked too. */
  trusted?: string[];
}

export interface FlashResult {
  device: string;
  model: string;
  bytes: number;
  sha256: string;
  compression: Compression;
  readBack: "match";
  manifest?: { path: string; name: string; version: string; signature: string; partitions: string[] };
  seconds: number;
}

function defaultManifest(image: string): string {
  return `${image.replace(/\.(xz|zst|gz)$/, "")}.manifest.json`;
}

/** Checks the flashed disk's partitions against the image's manifest (and its signature, with keys). */
async function checkManifest(
  device: string,
  path: string,
  trusted: string[] | undefined,
): Promise<NonNullable<FlashResult["manifest"]>> {
  const bytes = await readFile(path);
  const manifest = decodeManifest(bytes, path);
  let signature = "not checked (pass --pub)";
  if (trusted && trusted.length > 0) {
    const doc = decodeSignatures(await readFile(`${path}.sig`), `${path}.sig`);
    signature = `good (key ${verifyManifestSignature(bytes, doc, await loadTrustedKeys(trusted))})`;
  }
  const found = await hashDiskPartitions(device);
  const checked: string[] = [];
  for (const want of [manifest.partitions.root, manifest.partitions.firmware]) {
    if (!want) continue;
    const got = want.label === found.root.label ? found.root : found.firmware;
    if (!got || got.size !== want.size || got.sha256 !== want.sha256)
      throw new EosError(
        "HASH_MISMATCH",
        `${device}: partition ${want.label} does not match ${path} (sha256 ${got?.sha256 ?? "missing"}, want ${want.sha256})`,
        { hint: "the manifest is not this image's, or the disk is failing: flash again or use another disk" },
      );
    checked.push(want.label);
  }
  return { path, name: manifest.name, version: manifest.version, signature, partitions: checked };
}

export async function flashImage(ctx: Context, o: FlashOptions): Promise<FlashResult> {
  const started = performance.now();
  const head = Buffer.alloc(6);
  const imageHandle = await open(o.image, "r").catch((error: NodeJS.ErrnoException) => {
    throw new EosError("NOT_FOUND", `${o.image}: ${error.code ?? error.message}`);
  });
  await imageHandle.read(head, 0, 6, 0).finally(() => imageHandle.close());
  const compression = sniffCompression(head);
  const total = await imageSize(ctx, o.image, compression);
  const target = await inspectTarget(ctx, o.device);
  const refusal = flashRefusal(target, total, o.force);
  if (refusal) throw refuse(refusal);
  const manifestPath = o.manifest ?? defaultManifest(o.image);
  if (o.manifest !== undefined && !(await fileExists(o.manifest)))
    throw new EosError("NOT_FOUND", `--manifest ${o.manifest}: no such file`);
  if (o.trusted?.length && !(await fileExists(manifestPath)))
    throw new EosError("NOT_FOUND", `${manifestPath}: no manifest to check --pub against`, {
      hint: "pass --manifest FILE",
    });

  ctx.stderr.write(
    `image: ${o.image} (${total === undefined ? "size unknown" : formatBytes(total)}, ${compression})\n`,
  );
  ctx.stderr.write(`disk:  ${describeTarget(target, formatBytes)}\n`);
  if (!o.yes && !(await confirm(ctx, `Everything on ${target.path} will be lost. Type yes to write: `)))
    throw new EosError("REFUSED", `${target.path}: not confirmed, nothing written`, {
      hint: "answer yes, or pass --yes in scripts",
    });

  // O_EXCL on a block device: the kernel refuses while it is mounted or held by dm/md.
  const handle = await open(target.path, constants.O_WRONLY | constants.O_EXCL).catch(
    (error: NodeJS.ErrnoException) => {
      throw new EosError(
        "REFUSED",
        `${target.path}: cannot open it exclusively (${error.code ?? error.message})`,
        {
          hint:
            error.code === "EBUSY"
              ? "something holds the disk (mount, LUKS, LVM, RAID): release it first"
              : "",
        },
      );
    },
  );
  let written: { bytes: number; sha256: string };
  try {
    const { stream } = await decompressStream(ctx.proc, createReadStream(o.image));
    written = await writeStream(handle, stream as AsyncIterable<Buffer>, target, ctx, total);
    await handle.sync();
  } finally {
    await handle.close();
  }
  // Drop the disk's cached pages, so the read back comes from the disk and not from memory.
  await ctx.proc.run(["blockdev", "--flushbufs", target.path], { timeoutMs: 120_000 });
  const reading = await open(target.path, "r");
  let readBack: string;
  try {
    const shown = progress(ctx.stderr, `verifying ${target.path}`, written.bytes, {
      interactive: ctx.interactive,
    });
    readBack = await hashRange(reading, 0, written.bytes, (n) => {
      if (ctx.signal.aborted) throw interrupted(`verification of ${target.path}`);
      shown.add(n);
    });
    shown.done();
  } finally {
    await reading.close();
  }
  if (readBack !== written.sha256)
    throw new EosError("HASH_MISMATCH", `${target.path}: read back ${readBack}, wrote ${written.sha256}`, {
      hint: "the disk does not keep what is written to it: use another one",
    });
  const manifest = (await fileExists(manifestPath))
    ? await checkManifest(target.path, manifestPath, o.trusted)
    : undefined;
  return {
    device: target.path,
    model: target.model,
    bytes: written.bytes,
    sha256: written.sha256,
    compression,
    readBack: "match",
    ...(manifest ? { manifest } : {}),
    seconds: Math.round((performance.now() - started) / 100) / 10,
  };
}
