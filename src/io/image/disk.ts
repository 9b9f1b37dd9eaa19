/**
 * Disk assembly, all rootless: the root slot file system from the tree
 * (mksquashfs), the ESP as a FAT file (mkfs.fat -C + mtools) with GRUB EFI,
 * grub.cfg and grubenv, the GPT written by our own codec, partitions copied
 * in at their offsets, and the .xz.
 */
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { open, rename, rm, stat, truncate, writeFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { EosError } from "../../core/errors.ts";
import { encodeGpt } from "../../core/gpt-write.ts";
import { earlyGrubCfg, generateGrubCfg, initialGrubenv } from "../../core/image/grubcfg.ts";
import { ARCH_PROFILES, type Architecture } from "../../core/image/arch.ts";
import { baseCmdline, type ImageDescription } from "../../core/image/description.ts";
import type { DiskLayout } from "../../core/image/layout.ts";
import { verityLayout, verityUuid, type VerityRecord } from "../../core/verity.ts";
import { pipeThrough, type ProcessRunner, type RunOptions } from "../process.ts";

const build = (proc: ProcessRunner, argv: string[], o: RunOptions = {}) =>
  proc.run(argv, { code: "BUILD", ...o });

export const GRUB_MODULES = [
  "part_gpt",
  "part_msdos",
  "fat",
  "squash4",
  "xzio",
  "gzio",
  "lzopio",
  "normal",
  "linux",
  "boot",
  "configfile",
  "loadenv",
  "test",
  "echo",
  "serial",
  "terminal",
  "efi_gop",
  "all_video",
  "reboot",
  "halt",
  "sleep",
  "ls",
  "cat",
  "search",
  "regexp",
];

function withoutEpoch(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const copy = { ...env };
  delete copy.SOURCE_DATE_EPOCH;
  return copy;
}

/**
 * mksquashfs options beyond compression and times that shape the root's
 * bytes, and so what an update between two builds costs (issue 12 item 7,
 * bench/squashfs-options.ts). No fragments: with them, small files and file
 * tails are packed together, so a package that adds a few small files
 * repacks and recompresses the fragment blocks after them. Measured on the
 * demo's pair reduced to the paths the package touches (20 MB file system):
 * chunk path 373 KB against 678 KB, pair delta 69 KB against 118 KB, the
 * root 2.8% larger. GRUB 2.06 reads such a root (grub-fstest).
 */
export const ROOT_SQUASHFS_OPTIONS: readonly string[] = ["-no-fragments"];

export async function makeRootImage(
  proc: ProcessRunner,
  desc: Pick<ImageDescription, "root">,
  tree: string,
  out: string,
  sourceDateEpoch: number,
  signal?: AbortSignal,
  options: readonly string[] = ROOT_SQUASHFS_OPTIONS,
): Promise<number> {
  await rm(out, { force: true });
  const processors = Math.max(1, Math.min(8, availableParallelism()));
  await build(
    proc,
    [
      "mksquashfs",
      tree,
      out,
      "-noappend",
      "-comp",
      desc.root.compression,
      "-reproducible",
      "-mkfs-time",
      String(sourceDateEpoch),
      "-all-time",
      String(sourceDateEpoch),
      ...options,
      "-processors",
      String(processors),
      "-no-progress",
      "-quiet",
    ],
    // mksquashfs refuses SOURCE_DATE_EPOCH together with -all-time: the options carry it.
    { capture: false, env: withoutEpoch(process.env), ...(signal ? { signal } : {}) },
  );
  return (await stat(out)).size;
}

/**
 * Appends the dm-verity superblock and hash tree to the root file system
 * image in the one layout src/core/verity.ts describes (no salt, a UUID from
 * the file system's hash: the same input builds the same bytes), and returns
 * what the manifest and grubenv record.
 */
export async function addVerity(
  proc: ProcessRunner,
  image: string,
  signal?: AbortSignal,
): Promise<{ record: VerityRecord; bytes: number }> {
  const fsBytes = (await stat(image)).size;
  const layout = verityLayout(fsBytes);
  await truncate(image, layout.superblockOffset);
  const seed = createHash("sha256");
  for await (const chunk of createReadStream(image, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>)
    seed.update(chunk);
  const { stdout } = await build(
    proc,
    [
      "veritysetup",
      "format",
      "--format=1",
      "--hash=sha256",
      "--data-block-size=4096",
      "--hash-block-size=4096",
      `--data-blocks=${layout.dataBlocks}`,
      `--hash-offset=${layout.superblockOffset}`,
      "--salt=-",
      `--uuid=${verityUuid(seed.digest())}`,
      image,
      image,
    ],
    { what: "veritysetup format", ...(signal ? { signal } : {}) },
  );
  const rootHash = /^Root hash:\s+([0-9a-f]{64})\s*$/m.exec(stdout)?.[1];
  if (!rootHash)
    throw new EosError("BUILD", `veritysetup format printed no root hash: ${stdout.slice(0, 400)}`);
  const bytes = (await stat(image)).size;
  if (bytes !== layout.totalBytes)
    throw new EosError(
      "BUILD",
      `veritysetup wrote ${bytes} bytes for ${layout.dataBlocks} data blocks, EOS's layout has ${layout.totalBytes}`,
    );
  return { record: { algorithm: "sha256", data_blocks: layout.dataBlocks, root_hash: rootHash }, bytes };
}

/**
 * sha256 of a file padded with zeros to `size` bytes: the hash of the slot
 * partition it will fill (the manifest's root hash), known before the disk exists.
 */
export async function hashPadded(file: string, size: number): Promise<string> {
  const hash = createHash("sha256");
  let seen = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
    hash.update(chunk);
    seen += chunk.length;
  }
  if (seen > size)
    throw new EosError("BUILD", `${file} (${seen} bytes) is larger than its ${size}-byte partition`);
  const zeros = Buffer.alloc(1 << 20);
  for (let left = size - seen; left > 0; left -= zeros.length)
    hash.update(left >= zeros.length ? zeros : zeros.subarray(0, left));
  return hash.digest("hex");
}

/** What a profile adds to the ESP (the RPI profile's firmware, src/io/image/rpi-boot.ts). */
export interface EspExtras {
  /** Host files copied to the FAT's root under `dest`. */
  files: Array<{ src: string; dest: string }>;
  /** FAT32 with 512-byte clusters instead of mkfs.fat's choice (FAT16 at 64 MiB). */
  fat32: boolean;
}

/**
 * The ESP image: FAT with EFI/BOOT/{BOOTX64.EFI or BOOTAA64.EFI,grub.cfg,grubenv}.
 * GRUB's modules come from the host (x86_64) or from `grubModuleDir`, the
 * target's modules extracted from its grub-efi-<arch>-bin .deb.
 */
export async function makeEsp(
  proc: ProcessRunner,
  desc: ImageDescription,
  layout: DiskLayout,
  work: string,
  out: string,
  sourceDateEpoch: number,
  slotA: { version: string; sha256: string; size: number; verity: string | undefined },
  identity: { image: string; architecture: Architecture },
  grubModuleDir?: string,
  extras?: EspExtras,
): Promise<void> {
  const arch = ARCH_PROFILES[identity.architecture];
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin",
    SOURCE_DATE_EPOCH: String(sourceDateEpoch),
    MTOOLS_SKIP_CHECK: "1",
  };
  const early = join(work, "early.cfg");
  const efi = join(work, arch.efiBinary);
  const cfg = join(work, "grub.cfg");
  const envblk = join(work, "grubenv");
  // The suite's own GRUB (foreign architectures) is 2.12 from trixie on: no $cmdpath.
  await writeFile(
    early,
    earlyGrubCfg({ fwPath: grubModuleDir !== undefined && desc.distribution.suite !== "bookworm" }),
  );
  await writeFile(cfg, generateGrubCfg());
  await writeFile(
    envblk,
    initialGrubenv({
      aPart: layout.slotA.grubName,
      aUuid: layout.slotA.uuid,
      bPart: layout.slotB?.grubName,
      bUuid: layout.slotB?.uuid,
      cmdline: baseCmdline(desc),
      aRecord: slotA,
      identity,
    }),
  );
  await build(
    proc,
    [
      "grub-mkimage",
      "-O",
      arch.grubTarget,
      ...(grubModuleDir ? ["-d", grubModuleDir] : []),
      "-p",
      "/EFI/BOOT",
      "-c",
      early,
      "-o",
      efi,
      ...GRUB_MODULES,
    ],
    { env },
  );
  await rm(out, { force: true });
  const volid = layout.esp.uuid.replace(/-/g, "").slice(0, 8);
  await build(
    proc,
    [
      "mkfs.fat",
      "-C",
      ...(extras?.fat32 ? ["-F", "32", "-s", "1"] : []),
      "-n",
      "EOS-ESP",
      "-i",
      volid,
      "--invariant",
      out,
      String(layout.esp.size / 1024),
    ],
    { env, capture: false },
  );
  await build(proc, ["mmd", "-i", out, "::EFI", "::EFI/BOOT"], { env });
  await build(proc, ["mcopy", "-i", out, efi, cfg, envblk, "::EFI/BOOT/"], { env });
  for (const f of extras?.files ?? []) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._+-]*$/.test(f.dest))
      throw new EosError("BUILD", `ESP file name ${JSON.stringify(f.dest)} is not a plain file name`);
    await build(proc, ["mcopy", "-i", out, f.src, `::${f.dest}`], { env });
  }
}

async function copyInto(
  fd: Awaited<ReturnType<typeof open>>,
  src: string,
  offset: number,
  max: number,
  what: string,
) {
  const size = (await stat(src)).size;
  if (size > max) {
    throw new EosError("BUILD", `${what} is ${size} bytes, larger than its partition (${max} bytes)`, {
      hint: "raise partitions.root (or partitions.esp) in the image description, or drop packages",
    });
  }
  const stream = createWriteStream("", { fd: fd.fd, start: offset, autoClose: false });
  await pipeline(createReadStream(src, { highWaterMark: 1 << 20 }), stream);
}

/** The raw GPT disk: sparse file, GPT, ESP and slot A copied in; slot B and p.spare left blank. */
export async function assembleDisk(
  layout: DiskLayout,
  esp: string,
  root: string,
  out: string,
): Promise<void> {
  await rm(out, { force: true });
  const fd = await open(out, "w+");
  try {
    await fd.truncate(layout.diskSize);
    for (const w of encodeGpt(layout.table, layout.diskSize))
      await fd.write(w.data, 0, w.data.length, w.offset);
    await copyInto(fd, esp, layout.esp.offset, layout.esp.size, "the ESP");
    await copyInto(fd, root, layout.slotA.offset, layout.slotA.size, "the root file system");
    await fd.sync();
  } finally {
    await fd.close();
  }
}

/** NAME.raw.xz. The root slot is already compressed, so a fast level loses nothing. */
export async function compressXz(
  proc: ProcessRunner,
  raw: string,
  out: string,
  signal?: AbortSignal,
): Promise<void> {
  await rm(out, { force: true });
  const tmp = `${out}.tmp`;
  const xz = pipeThrough(proc, ["xz", "-T0", "-1", "-c", "--", raw], {
    fail: (code, stderr) => new EosError("BUILD", `xz ${raw}: exit status ${code}: ${stderr}`),
    notStarted: (error) =>
      new EosError("BUILD", `cannot run xz: ${error.message}`, { hint: "install xz-utils" }),
  });
  await pipeline(xz, createWriteStream(tmp), ...(signal ? [{ signal }] : []));
  await rename(tmp, out);
}
