/**
 * The dm-verity tree eos build appends to a root slot, checked with the real
 * veritysetup (userspace verify: this host has no device-mapper) using the
 * very arguments the image's initramfs opens the slot with.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { copyFile, mkdir, mkdtemp, open, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { addVerity } from "../../src/io/image/disk.ts";
import { systemRunner } from "../../src/io/process.ts";
import { rootFiles } from "../../src/core/image/root-files.ts";
import { parseImageDescription } from "../../src/core/image/description.ts";
import { hashDiskPartitions } from "../../src/io/disk-image.ts";
import { verityTailOf } from "../../src/io/update/verity-stream.ts";
import { flipByte, makeSampleImage, pseudoRandomBytes } from "../helpers/sample-image.ts";
import type { VerityRecord } from "../../src/core/verity.ts";

function sh(argv: string[], env: Record<string, string> = {}): { code: number; out: string } {
  const r = spawnSync(argv[0] as string, argv.slice(1), { env: { ...process.env, ...env } });
  return { code: r.status ?? 128, out: `${r.stdout.toString()}${r.stderr.toString()}` };
}

/** The initramfs's `veritysetup open …` line, as `veritysetup verify …` (same parameters, no mapping). */
function initramfsVerify(): string {
  const desc = parseImageDescription('name: EOS\nversion: "1"\n', "test.yml");
  const files = rootFiles(desc, {
    keyNames: [],
    commands: [],
    nodePath: undefined,
    updateCommitUnit: "",
    architecture: "x86_64",
  });
  const script = files.find((f) => f.path === "/etc/initramfs-tools/scripts/local-premount/eos-verity");
  assert.ok(script, "the image's initramfs opens the root under dm-verity");
  const open = /veritysetup open ([\s\S]*?"\$hash")/.exec(script.content)?.[1];
  assert.ok(open);
  return `veritysetup verify ${open.replace(/\\\n\s*/g, "").replace(" eos-root ", " ")}`;
}

async function squashfs(dir: string, name: string): Promise<string> {
  const tree = join(dir, `${name}.tree`);
  await mkdir(join(tree, "usr/bin"), { recursive: true });
  await writeFile(join(tree, "usr/bin/init"), pseudoRandomBytes("init", 3 * 2 ** 20));
  await writeFile(join(tree, "etc-os-release"), "NAME=EOS\n");
  const out = join(dir, `${name}.squashfs`);
  const r = sh([
    "mksquashfs",
    tree,
    out,
    "-noappend",
    "-quiet",
    "-no-progress",
    "-comp",
    "gzip",
    "-reproducible",
    "-mkfs-time",
    "0",
    "-all-time",
    "0",
  ]);
  assert.equal(r.code, 0, r.out);
  return out;
}

test("the slot's tree verifies with the initramfs's own parameters, and a changed byte does not", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "eos-verity-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const slot = await squashfs(dir, "root");
  const { record } = await addVerity(systemRunner(), slot);
  const verify = initramfsVerify();
  const env = (file: string, r: VerityRecord) => ({
    slot: file,
    hash: r.root_hash,
    blocks: String(r.data_blocks),
  });
  const good = sh(["sh", "-c", verify], env(slot, record));
  assert.equal(good.code, 0, `${verify}: ${good.out}`);

  // The squashfs's mkfs_time: a change squashfs itself never notices, dm-verity does.
  const tampered = join(dir, "tampered.squashfs");
  await copyFile(slot, tampered);
  await flipByte(tampered, 8);
  assert.equal(sh(["unsquashfs", "-s", tampered]).code, 0, "squashfs alone reads the changed slot");
  const bad = sh(["sh", "-c", verify], env(tampered, record));
  assert.notEqual(bad.code, 0);
  assert.match(bad.out, /Verification failed|verification failed/i);
  // A changed tree (the last block) fails too, and so does another root hash.
  const treeChanged = join(dir, "tree.squashfs");
  await copyFile(slot, treeChanged);
  await flipByte(treeChanged, (await readFile(slot)).length - 1);
  assert.notEqual(sh(["sh", "-c", verify], env(treeChanged, record)).code, 0);
  assert.notEqual(sh(["sh", "-c", verify], env(slot, { ...record, root_hash: "0".repeat(64) })).code, 0);
});

test("the same file system gives the same tree, byte for byte (a reproducible slot)", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "eos-verity-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const a = await squashfs(dir, "a");
  const b = await squashfs(dir, "b");
  assert.deepEqual(await readFile(a), await readFile(b), "mksquashfs -reproducible");
  const ra = await addVerity(systemRunner(), a);
  const rb = await addVerity(systemRunner(), b);
  assert.deepEqual(ra, rb);
  assert.deepEqual(await readFile(a), await readFile(b));
});

test("the manifest reads the root hash back from the disk; a disk without a tree has none", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "eos-verity-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const withTree = join(dir, "with.raw");
  await makeSampleImage(withTree, { version: "1.0.0", verity: true });
  const parts = await hashDiskPartitions(withTree);
  const verity = parts.root.verity;
  assert.ok(verity);
  // veritysetup agrees on the root hash when it reads the slot out of the disk.
  const slotFile = join(dir, "slot.img");
  const offset = parts.table.partitions.find((p) => p.name === "p.lxreadonly")?.firstLba;
  assert.ok(offset !== undefined);
  const r = sh([
    "dd",
    `if=${withTree}`,
    `of=${slotFile}`,
    "bs=512",
    `skip=${offset}`,
    `count=${parts.root.size / 512}`,
  ]);
  assert.equal(r.code, 0, r.out);
  const check = sh(["sh", "-c", initramfsVerify()], {
    slot: slotFile,
    hash: verity.root_hash,
    blocks: String(verity.data_blocks),
  });
  assert.equal(check.code, 0, check.out);

  const without = join(dir, "without.raw");
  await makeSampleImage(without, { version: "1.0.0" });
  assert.equal((await hashDiskPartitions(without)).root.verity, undefined);
});

test("a device computes the same superblock and tree as veritysetup from the file system alone", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "eos-verity-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  // Large enough for a three-level tree (more than 128 × 128 blocks), with odd chunking.
  await mkdir(join(dir, "big.tree"), { recursive: true });
  await writeFile(join(dir, "big.tree", "blob"), pseudoRandomBytes("big", 70 * 2 ** 20));
  const slot = join(dir, "big.squashfs");
  assert.equal(
    sh(["mksquashfs", join(dir, "big.tree"), slot, "-noappend", "-quiet", "-no-progress", "-noI", "-noD"])
      .code,
    0,
  );
  const { record, bytes } = await addVerity(systemRunner(), slot);
  const built = await readFile(slot);
  const fs = built.subarray(0, record.data_blocks * 4096);
  // As a delta's decode leaves it: the file system in the slot, followed by what was there before.
  const landed = join(dir, "landed.slot");
  await writeFile(landed, Buffer.concat([fs, pseudoRandomBytes("stale", bytes - fs.length)]));
  const handle = await open(landed, "r");
  try {
    const tail = await verityTailOf(handle, 0, record.data_blocks);
    assert.equal(fs.length + tail.length, bytes);
    assert.ok(
      Buffer.concat([fs, tail]).equals(built),
      "superblock and tree equal veritysetup's, byte for byte",
    );
  } finally {
    await handle.close();
  }
  // A slot that ends before the file system's recorded blocks is refused, not padded.
  await writeFile(landed, fs.subarray(0, fs.length - 1));
  const short = await open(landed, "r");
  try {
    await assert.rejects(verityTailOf(short, 0, record.data_blocks), /ends at/);
  } finally {
    await short.close();
  }
});
