/**
 * Small but real EOS-shaped disk images for tests and the server demo:
 * sgdisk partitions labelled like an EOS image, a FAT ESP made by mkfs.vfat
 * and a squashfs root made by mksquashfs, written at the offsets of the GPT.
 */
import { addVerity } from "../../src/io/image/disk.ts";
import { systemRunner } from "../../src/io/process.ts";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, mkdir, open, readFile, rm, symlink, writeFile, truncate } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readGpt, requirePartition, partitionRange } from "../../src/core/gpt.ts";
import { openBlockSource } from "../../src/io/files.ts";
import { mustRun } from "./run.ts";

const MiB = 1024 * 1024;

export interface SampleImageOptions {
  version: string;
  /** Random payload in the root file system, to make it larger than 10 MB if wanted. */
  payloadBytes?: number;
  rootSizeMiB?: number;
  espSizeMiB?: number;
  diskSizeMiB?: number;
  /** Leave out the firmware partition, or label the root differently, to test refusals. */
  labels?: { root?: string; esp?: string };
  /** Deterministic payload for reproducible bytes. */
  seed?: string;
  /** More firmware files beside fw.txt on the ESP (name at its root → content). */
  firmwareFiles?: Record<string, string>;
  /** Append a dm-verity tree to the root file system, as eos build does. */
  verity?: boolean;
}

/** Deterministic pseudo-random bytes (a sha256 chain): incompressible, like a compressed root. */
export function pseudoRandomBytes(seed: string, length: number): Buffer {
  const out = Buffer.alloc(length);
  let block = createHash("sha256").update(seed).digest();
  for (let at = 0; at < length; at += block.length) {
    block.copy(out, at);
    block = createHash("sha256").update(block).digest();
  }
  return out;
}

export async function makeSampleImage(path: string, options: SampleImageOptions): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), "eos-sample-"));
  try {
    const espMiB = options.espSizeMiB ?? 8;
    const rootMiB = options.rootSizeMiB ?? 16;
    const diskMiB = options.diskSizeMiB ?? 2 + espMiB + 2 * rootMiB + 8;
    const tree = join(work, "root");
    await mkdir(join(tree, "etc"), { recursive: true });
    await mkdir(join(tree, "boot"), { recursive: true });
    await writeFile(join(tree, "etc", "os-release"), `NAME=EOS\nVERSION="${options.version}"\n`);
    await writeFile(
      join(tree, "payload.bin"),
      pseudoRandomBytes(options.seed ?? options.version, options.payloadBytes ?? 2 * MiB),
    );
    await writeFile(join(tree, "boot", "uuid"), randomBytes(16).toString("hex"));
    // Stand-ins for a kernel and initrd, linked the way Debian links them, so kexec loading can be checked.
    await writeFile(join(tree, "boot", `vmlinuz-${options.version}`), `kernel ${options.version}\n`);
    await writeFile(join(tree, "boot", `initrd.img-${options.version}`), `initrd ${options.version}\n`);
    await symlink(`vmlinuz-${options.version}`, join(tree, "boot", "vmlinuz"));
    await symlink(`/boot/initrd.img-${options.version}`, join(tree, "boot", "initrd.img"));
    const squash = join(work, "root.squashfs");
    await mustRun("mksquashfs", [tree, squash, "-noappend", "-quiet", "-comp", "gzip", "-all-root"]);
    if (options.verity) await addVerity(systemRunner(), squash);
    const esp = join(work, "esp.vfat");
    await mustRun("mkfs.vfat", ["-C", esp, String(espMiB * 1024), "-n", "EFI"]);
    await writeFile(join(work, "fw.txt"), `firmware for ${options.version}\n`);
    await mustRun("mcopy", ["-i", esp, join(work, "fw.txt"), "::/fw.txt"]);
    for (const [name, content] of Object.entries(options.firmwareFiles ?? {})) {
      await writeFile(join(work, name), content);
      await mustRun("mcopy", ["-i", esp, join(work, name), `::/${name}`]);
    }
    await writeFile(join(work, "loader.efi"), `loader from ${options.version}\n`);
    await mustRun("mmd", ["-i", esp, "::/EFI", "::/EFI/BOOT"]);
    await mustRun("mcopy", ["-i", esp, join(work, "loader.efi"), "::/EFI/BOOT/BOOTX64.EFI"]);

    await rm(path, { force: true });
    await writeFile(path, "");
    await truncate(path, diskMiB * MiB);
    const espLabel = options.labels?.esp ?? "p.UEFI";
    const rootLabel = options.labels?.root ?? "p.lxreadonly";
    await mustRun("sgdisk", [
      "-n",
      `1:2048:+${espMiB}M`,
      "-t",
      "1:ef00",
      "-c",
      `1:${espLabel}`,
      "-n",
      `2:0:+${rootMiB}M`,
      "-t",
      "2:8300",
      "-c",
      `2:${rootLabel}`,
      "-n",
      `3:0:+${rootMiB}M`,
      "-t",
      "3:8300",
      "-c",
      "3:p.lxrootclone1",
      "-n",
      "4:0:0",
      "-t",
      "4:8300",
      "-c",
      "4:p.spare",
      path,
    ]);
    const source = await openBlockSource(path, "r+");
    try {
      const { table } = await readGpt(source);
      const put = async (label: string, file: string) => {
        const range = partitionRange(table, requirePartition(table, label));
        const data = await readFile(file);
        if (data.length > range.length) throw new Error(`${file} does not fit ${label}`);
        await source.handle.write(data, 0, data.length, range.offset);
      };
      await put(espLabel, esp);
      await put(rootLabel, squash);
    } finally {
      await source.close();
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

export async function xzFile(path: string): Promise<string> {
  await mustRun("xz", ["-k", "-f", "-T1", "-0", path]);
  return `${path}.xz`;
}

export async function zstdFile(path: string): Promise<string> {
  await mustRun("zstd", ["-q", "-f", "-1", path, "-o", `${path}.zst`]);
  return `${path}.zst`;
}

/** Bytes of a labelled partition of an image file. */
export async function partitionBytes(path: string, label: string): Promise<Buffer> {
  const source = await openBlockSource(path);
  try {
    const { table } = await readGpt(source);
    const range = partitionRange(table, requirePartition(table, label));
    return await source.read(range.offset, range.length);
  } finally {
    await source.close();
  }
}

export async function flipByte(path: string, offset: number): Promise<void> {
  const handle = await open(path, "r+");
  try {
    const b = Buffer.alloc(1);
    await handle.read(b, 0, 1, offset);
    b.writeUInt8(b.readUInt8(0) ^ 0xff, 0);
    await handle.write(b, 0, 1, offset);
  } finally {
    await handle.close();
  }
}
