/**
 * Booting test images and changing them from the host before a boot: the
 * grubenv on the ESP (mtools at the partition's offset) and the content of
 * a root slot. Every VM started here is killed when the test ends.
 */
import { copyFile, mkdir, open, rm, mkdtemp, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import type { TestContext } from "node:test";
import { findPartition, readGpt, partitionRange, type ByteRange } from "../../src/core/gpt.ts";
import { decodeGrubenv, encodeGrubenv } from "../../src/core/update/grubenv.ts";
import { FIRMWARE_LABEL } from "../../src/core/manifest.ts";
import { openBlockSource } from "../../src/io/files.ts";
import { Vm, type VmOptions } from "../../src/io/machine/qemu.ts";
import { VM_TMP, type TestImage } from "./vm-image.ts";

/** Minutes a TCG boot may take on a busy 2-core CI machine before a test gives up. */
export const BOOT_TIMEOUT_MS = 6 * 60_000;

export async function startTestVm(
  t: TestContext | undefined,
  image: TestImage,
  options: Partial<VmOptions> & { raw?: string } = {},
): Promise<Vm> {
  await mkdir(join(VM_TMP, "run"), { recursive: true });
  const workDir = options.workDir ?? (await mkdtemp(join(VM_TMP, "run", "vm-")));
  const vm = await Vm.start({
    image: options.raw ?? image.raw,
    sshKey: image.sshKey,
    registryDiskBytes: 0,
    ...options,
    workDir,
  });
  const cleanup = async () => {
    await vm.kill();
    if (!process.env.EOS_VM_KEEP) await rm(workDir, { recursive: true, force: true });
  };
  t?.after(cleanup);
  return vm;
}

/** A sparse private copy of an image, for tests that change it before booting. */
export async function copyImage(raw: string, dir: string, name = "disk.raw"): Promise<string> {
  await mkdir(dir, { recursive: true });
  const target = join(dir, name);
  const r = spawnSync("cp", ["--sparse=always", "--", raw, target]);
  if (r.status !== 0) await copyFile(raw, target);
  return target;
}

export async function partitionByLabel(raw: string, label: string): Promise<ByteRange> {
  const src = await openBlockSource(raw);
  try {
    const { table } = await readGpt(src);
    const p = findPartition(table, label);
    if (!p) throw new Error(`${raw} has no partition ${label}`);
    return partitionRange(table, p);
  } finally {
    await src.close();
  }
}

function mtools(args: string[]): string {
  const r = spawnSync(args[0] as string, args.slice(1), { env: { ...process.env, MTOOLS_SKIP_CHECK: "1" } });
  if (r.status !== 0) throw new Error(`${args.join(" ")}: ${r.stderr.toString()}`);
  return r.stdout.toString("latin1");
}

/** Reads EFI/BOOT/grubenv from an image's ESP. */
export async function readImageGrubenv(raw: string): Promise<Map<string, string>> {
  const esp = await partitionByLabel(raw, FIRMWARE_LABEL);
  const out = mtools(["mtype", "-i", `${raw}@@${esp.offset}`, "::EFI/BOOT/grubenv"]);
  return decodeGrubenv(Buffer.from(out, "latin1"), `${raw}:grubenv`);
}

/** Rewrites EFI/BOOT/grubenv on an image's ESP with some variables changed. */
export async function editImageGrubenv(
  raw: string,
  changes: Record<string, string>,
): Promise<Map<string, string>> {
  const vars = await readImageGrubenv(raw);
  for (const [k, v] of Object.entries(changes)) vars.set(k, v);
  const esp = await partitionByLabel(raw, FIRMWARE_LABEL);
  const tmp = await mkdtemp(join(VM_TMP, "grubenv-"));
  try {
    const file = join(tmp, "grubenv");
    await writeFile(file, encodeGrubenv(vars));
    mtools(["mcopy", "-o", "-i", `${raw}@@${esp.offset}`, file, "::EFI/BOOT/grubenv"]);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return vars;
}

/** Writes a file system image into a partition (the rest of the partition is zeroed). */
export async function writePartition(raw: string, label: string, content: Buffer): Promise<void> {
  const range = await partitionByLabel(raw, label);
  if (content.length > range.length) throw new Error(`${content.length} bytes do not fit ${label}`);
  const fd = await open(raw, "r+");
  try {
    await fd.write(Buffer.alloc(range.length), 0, range.length, range.offset);
    await fd.write(content, 0, content.length, range.offset);
  } finally {
    await fd.close();
  }
}

/** Reads a partition's bytes (e.g. the root slot's squashfs). */
export async function readPartition(raw: string, label: string): Promise<Buffer> {
  const range = await partitionByLabel(raw, label);
  const fd = await open(raw, "r");
  try {
    const buf = Buffer.alloc(range.length);
    await fd.read(buf, 0, range.length, range.offset);
    return buf;
  } finally {
    await fd.close();
  }
}
