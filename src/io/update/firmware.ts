/**
 * Firmware update of the ESP (the original --firmware): the image's p.UEFI
 * stream is verified against the signed manifest, its files are written
 * beside the current ones and then switched in by rename, one file at a time.
 * EFI/ (the running OS's loader, grub.cfg and the boot control block) is
 * never touched, so a power cut at any point leaves a bootable ESP.
 */
import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, mkdtemp, readdir, rename, rm, copyFile, lstat, truncate } from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { EosError } from "../../core/errors.ts";
import { streamBytes, type ManifestPartition } from "../../core/manifest.ts";
import { firmwareSwitchOrder } from "../../core/update/firmware-order.ts";
import { crashPoint } from "../crash-point.ts";
import { fsyncDir, fsyncFile } from "../files.ts";
import type { ProcessRunner } from "../process.ts";
import { watchWithLimits, type TransferLimits } from "../watchdog.ts";
import type { UpdateSource } from "./source.ts";

const NEW_SUFFIX = ".eos-new";
const WORK_PREFIX = "firmware-";

/** Every regular file under dir, as paths relative to it. */
async function listFiles(dir: string, base = dir): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await listFiles(full, base)));
    else if (entry.isFile()) out.push(relative(base, full));
  }
  return out;
}

function kept(path: string): boolean {
  return path.split("/")[0]?.toUpperCase() === "EFI";
}

export interface FirmwareResult {
  updated: string[];
  removed: string[];
}

export async function updateFirmware(options: {
  source: UpdateSource;
  firmware: ManifestPartition;
  esp: string;
  workDir: string;
  proc: ProcessRunner;
  limits: TransferLimits;
  signal?: AbortSignal;
}): Promise<FirmwareResult> {
  await mkdir(options.workDir, { recursive: true, mode: 0o700 });
  // A killed run's work directory (a whole ESP image) would stay until the next boot: the caller holds the lock.
  for (const name of await readdir(options.workDir))
    if (name.startsWith(WORK_PREFIX)) await rm(join(options.workDir, name), { recursive: true, force: true });
  const work = await mkdtemp(join(options.workDir, WORK_PREFIX));
  try {
    const image = join(work, "esp.img");
    const hash = createHash("sha256");
    let size = 0;
    // Only the data travels (a server that sends more is cut); the zero tail is hashed and left sparse here.
    const dataEnd = streamBytes(options.firmware);
    const end = dataEnd < options.firmware.size ? dataEnd : undefined;
    const { stream } = await options.source.openStream("firmware", 0, undefined, end);
    const watch = watchWithLimits(stream, options.limits, "download of firmware", options.signal);
    try {
      await pipeline(
        stream,
        new Transform({
          transform(chunk: Buffer, _enc, cb) {
            watch.add(chunk.length);
            const data = end === undefined ? chunk : chunk.subarray(0, Math.max(0, end - size));
            hash.update(data);
            size += data.length;
            cb(null, data);
          },
        }),
        createWriteStream(image, { mode: 0o600 }),
      );
    } finally {
      watch.stop();
    }
    if (end !== undefined && size === end) {
      const zeros = Buffer.alloc(1 << 20);
      for (let left = options.firmware.size - end; left > 0; left -= zeros.length)
        hash.update(zeros.subarray(0, Math.min(left, zeros.length)));
      await truncate(image, options.firmware.size);
      size = options.firmware.size;
    }
    const sha = hash.digest("hex");
    if (size !== options.firmware.size || sha !== options.firmware.sha256) {
      throw new EosError(
        "HASH_MISMATCH",
        `firmware stream (${size} bytes, sha256 ${sha}) does not match the signed manifest`,
      );
    }
    crashPoint("firmware:downloaded");
    const tree = join(work, "tree");
    await mkdir(tree);
    const copy = await options.proc.run(["mcopy", "-s", "-n", "-m", "-i", image, "::/*", `${tree}/`], {
      env: { ...process.env, MTOOLS_SKIP_CHECK: "1" },
      check: false,
    });
    // An empty FAT has nothing to copy; anything else is an error.
    if (copy.code !== 0 && !/no match|not found/i.test(copy.stderr))
      throw new EosError("IO", `cannot read the firmware image: ${copy.stderr}`);
    const incoming = firmwareSwitchOrder(
      (await listFiles(tree)).filter((f) => !kept(f)),
      new Set(await listFiles(options.esp)),
    );
    // 1. Beside the old files: every new file as NAME.eos-new, flushed.
    for (const [i, file] of incoming.entries()) {
      if (i === 1) crashPoint("firmware:staged-partly");
      const target = join(options.esp, `${file}${NEW_SUFFIX}`);
      await mkdir(dirname(target), { recursive: true });
      await copyFile(join(tree, file), target);
      await fsyncFile(target);
    }
    crashPoint("firmware:staged");
    // 2. Switch each file in by rename, in an order that keeps a cut between two renames bootable (firmware-order.ts).
    for (const [i, file] of incoming.entries()) {
      if (i === 1) crashPoint("firmware:switched-partly");
      await rename(join(options.esp, `${file}${NEW_SUFFIX}`), join(options.esp, file));
      // On FAT the renamed file's directory entry reaches the disk only with its own fsync
      // (atomicWriteFile says why); without it a cut leaves the name on the freed old clusters.
      await fsyncFile(join(options.esp, file));
      await fsyncDir(dirname(join(options.esp, file)));
    }
    crashPoint("firmware:switched");
    // 3. Files the new firmware no longer has go, as the original's whole-partition copy would drop them.
    const wanted = new Set(incoming);
    const removed: string[] = [];
    for (const file of await listFiles(options.esp)) {
      if (kept(file) || wanted.has(file)) continue;
      if ((await lstat(join(options.esp, file))).isFile()) {
        if (removed.length === 1) crashPoint("firmware:removed-partly");
        await rm(join(options.esp, file));
        removed.push(file);
      }
    }
    return { updated: incoming, removed };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
