/**
 * The aarch64 AB disk's structure, in seconds and without emulation: a tiny
 * fake root tree goes through the real squashfs, ESP and GPT steps of
 * `eos build --arch aarch64`. grub-mkimage gets the arm64 modules only where
 * a cached arm64 root brought them (EOS_CACHE_DIR); elsewhere a stand-in
 * records its arguments, which is what this test is about.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PartitionType, readGpt, findPartition } from "../../src/core/gpt.ts";
import { parseImageDescription } from "../../src/core/image/description.ts";
import { earlyGrubCfg } from "../../src/core/image/grubcfg.ts";
import { planLayout } from "../../src/core/image/layout.ts";
import { decodeGrubenv } from "../../src/core/update/grubenv.ts";
import { ROOT_CLONE_LABEL, ROOT_LABEL } from "../../src/core/manifest.ts";
import { imageArchitecture } from "../../src/io/disk-image.ts";
import { generateReleaseKeys } from "../../src/io/keys.ts";
import { writeManifest } from "../../src/io/release.ts";
import { captureContext } from "../helpers/context.ts";
import { assembleDisk, makeRootImage } from "../../src/io/image/disk.ts";
import { openBlockSource } from "../../src/io/files.ts";
import { systemRunner } from "../../src/io/process.ts";
import { arm64Grub, cachedArm64Root, makeArm64Esp, MTOOLS_ENV } from "../helpers/arm64-esp.ts";

test("aarch64 AB disk: Linux root (ARM64) slots, BOOTAA64.EFI from arm64 modules, grubenv says aarch64", async (t) => {
  const work = await mkdtemp(join(tmpdir(), "eos-arm64-disk-"));
  t.after(() => rm(work, { recursive: true, force: true }));
  const desc = parseImageDescription(
    "name: EOS\nversion: '1.0'\nkernel: {cmdline: [console=ttyAMA0]}\npartitions: {root: 64M, esp: 32M, spare: 8M}\n",
    "arm.yaml",
  );
  const layout = planLayout(desc, "AB", "aarch64");
  const tree = join(work, "tree");
  await mkdir(join(tree, "boot"), { recursive: true });
  await writeFile(join(tree, "boot/vmlinuz"), "not a kernel");
  const rootImg = join(work, "root.img");
  await makeRootImage(systemRunner(), desc, tree, rootImg, 1686355200);

  const grub = arm64Grub(work, (await cachedArm64Root())?.grubDeb);
  const esp = await makeArm64Esp(grub, desc, layout, work);

  const argv = grub.mkimageCalls[0] ?? [];
  assert.equal(argv[argv.indexOf("-O") + 1], "arm64-efi");
  assert.equal(argv[argv.indexOf("-d") + 1], grub.moduleDir);
  assert.ok(argv.includes("squash4") && argv.includes("loadenv"));
  // The embedded early config: bookworm's GRUB 2.06 sets $cmdpath and keeps its bytes; the
  // suite's GRUB from trixie on (2.12) sets only $fw_path, which that description's ESP reads.
  const early = (a: string[]) => readFileSync(a[a.indexOf("-c") + 1] as string, "utf8");
  assert.equal(early(argv), earlyGrubCfg());
  const trixieWork = join(work, "trixie");
  await mkdir(trixieWork);
  const trixie = { ...desc, distribution: { ...desc.distribution, suite: "trixie" as const } };
  await makeArm64Esp(grub, trixie, layout, trixieWork);
  assert.equal(early(grub.mkimageCalls[1] ?? []), earlyGrubCfg({ fwPath: true }));

  const env = MTOOLS_ENV;
  const listing = spawnSync("mdir", ["-i", esp, "-b", "::EFI/BOOT"], { env }).stdout.toString();
  for (const f of ["BOOTAA64.EFI", "grub.cfg", "grubenv"]) assert.match(listing, new RegExp(f), listing);
  assert.doesNotMatch(listing, /BOOTX64/);
  const efi = spawnSync("mtype", ["-i", esp, "::EFI/BOOT/BOOTAA64.EFI"], { env }).stdout;
  if (grub.real) {
    // PE/COFF with the arm64 machine type (0xaa64) after the "PE\0\0" signature.
    assert.equal(efi.subarray(0, 2).toString(), "MZ");
    const pe = efi.readUInt32LE(0x3c);
    assert.equal(efi.readUInt16LE(pe + 4), 0xaa64);
  } else t.diagnostic("no cached arm64 root: grub-mkimage's arguments checked, not its output");
  const grubenv = decodeGrubenv(spawnSync("mtype", ["-i", esp, "::EFI/BOOT/grubenv"], { env }).stdout);
  assert.equal(grubenv.get("eos_arch"), "aarch64");
  assert.equal(grubenv.get("eos_cmdline"), "console=ttyAMA0 rootfstype=squashfs");

  const raw = join(work, "EOS.aarch64-AB.raw");
  await assembleDisk(layout, esp, rootImg, raw);
  const source = await openBlockSource(raw);
  try {
    const { table } = await readGpt(source);
    assert.equal(findPartition(table, ROOT_LABEL)?.typeGuid, PartitionType.linuxRootArm64);
    assert.equal(findPartition(table, ROOT_CLONE_LABEL)?.typeGuid, PartitionType.linuxRootArm64);
  } finally {
    await source.close();
  }
  // sgdisk agrees (8305 = Linux root (ARM64)), and eos run would pick the arm64 machine.
  const sg = spawnSync("sgdisk", ["-p", raw]).stdout.toString();
  assert.match(sg, /\s2\s+\d+\s+\d+\s+[\d.]+ MiB\s+8305\s+p\.lxreadonly/);
  assert.match(sg, /\s3\s+\d+\s+\d+\s+[\d.]+ MiB\s+8305\s+p\.lxrootclone1/);
  assert.equal(await imageArchitecture(raw), "aarch64");
  // `eos manifest` without --arch on this x86_64 machine: the disk's own architecture.
  const { key } = await generateReleaseKeys(join(work, "keys"), true);
  const { manifest } = await writeManifest(captureContext().ctx, raw, { keys: [key], quiet: true });
  assert.equal(manifest.architecture, "aarch64");
});
