import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  checkVeritySuperblock,
  parseVerityParameter,
  squashfsBytesUsed,
  verityLayout,
  verityParameter,
  verityRootHash,
  verityUuid,
} from "../../src/core/verity.ts";
import { checkManifest } from "../../src/core/manifest.ts";
import { EosError } from "../../src/core/errors.ts";

test("verityLayout: data padded to 4 KiB blocks, superblock, then every tree level", () => {
  // Measured with veritysetup format (cryptsetup 2.6.1): 10,000,000 bytes of data → 2442 blocks,
  // 21 hash blocks (20 + 1), 10,092,544 bytes in all.
  assert.deepEqual(verityLayout(10_000_000), {
    dataBlocks: 2442,
    superblockOffset: 2442 * 4096,
    treeOffset: 2443 * 4096,
    totalBytes: 10_092_544,
  });
  // One block of data: one hash block; 128 blocks fill exactly one; 129 need a second level.
  assert.equal(verityLayout(1).totalBytes, 3 * 4096);
  assert.equal(verityLayout(128 * 4096).totalBytes, (128 + 2) * 4096);
  assert.equal(verityLayout(129 * 4096).totalBytes, (129 + 1 + 3) * 4096);
});

test("squashfsBytesUsed reads bytes_used from a squashfs superblock, nothing else", () => {
  const sb = Buffer.alloc(96);
  sb.write("hsqs", 0, "latin1");
  sb.writeBigUInt64LE(182_452_224n, 40);
  assert.equal(squashfsBytesUsed(sb), 182_452_224);
  assert.equal(squashfsBytesUsed(sb.subarray(0, 64)), undefined);
  const ext = Buffer.from(sb);
  ext.write("xxxx", 0, "latin1");
  assert.equal(squashfsBytesUsed(ext), undefined);
  sb.writeBigUInt64LE(0n, 40);
  assert.equal(squashfsBytesUsed(sb), undefined);
});

function superblock(
  over: { algorithm?: string; blocks?: number; salt?: number; size?: number } = {},
): Buffer {
  const b = Buffer.alloc(4096);
  b.write("verity\0\0", 0, "latin1");
  b.writeUInt32LE(1, 8);
  b.writeUInt32LE(1, 12);
  b.write(over.algorithm ?? "sha256", 32, "latin1");
  b.writeUInt32LE(over.size ?? 4096, 64);
  b.writeUInt32LE(4096, 68);
  b.writeBigUInt64LE(BigInt(over.blocks ?? 2442), 72);
  b.writeUInt16LE(over.salt ?? 0, 80);
  return b;
}

test("checkVeritySuperblock: the EOS layout passes, no superblock is false, another shape an error that names it", () => {
  assert.equal(checkVeritySuperblock(superblock(), 2442, "slot"), true);
  assert.equal(checkVeritySuperblock(Buffer.alloc(4096), 2442, "slot"), false);
  const cases: Array<[Buffer, RegExp]> = [
    [superblock({ algorithm: "sha1" }), /algorithm "sha1"/],
    [superblock({ blocks: 2441 }), /data_blocks 2441/],
    [superblock({ salt: 32 }), /salt_size 32/],
    [superblock({ size: 512 }), /data_block_size 512/],
  ];
  for (const [block, message] of cases)
    assert.throws(
      () => checkVeritySuperblock(block, 2442, "disk.raw"),
      (e: unknown) => e instanceof EosError && e.code === "MANIFEST" && message.test(e.message),
    );
});

test("verityRootHash: sha256 of the top block (no salt), and only of a whole block", () => {
  const top = Buffer.alloc(4096, 7);
  assert.equal(verityRootHash(top), createHash("sha256").update(top).digest("hex"));
  assert.throws(() => verityRootHash(Buffer.alloc(100)), EosError);
});

test("the eos.verity parameter round-trips and refuses what the initramfs would misread", () => {
  const record = { algorithm: "sha256" as const, root_hash: "0a".repeat(32), data_blocks: 44_032 };
  assert.equal(verityParameter(record), `${"0a".repeat(32)}:44032`);
  assert.deepEqual(parseVerityParameter(verityParameter(record)), record);
  for (const bad of ["", "0a:1", `${"0a".repeat(32)}:0`, `${"0A".repeat(32)}:1`, `${"0a".repeat(32)}:1 x`])
    assert.equal(parseVerityParameter(bad), undefined, bad);
});

test("verityUuid: a UUID-shaped function of its seed, so rebuilds are byte-identical", () => {
  const a = verityUuid(Buffer.from("one"));
  assert.match(a, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  assert.equal(verityUuid(Buffer.from("one")), a);
  assert.notEqual(verityUuid(Buffer.from("two")), a);
});

test("manifest: partitions.root.verity is checked strictly and must leave room for the tree", () => {
  const base = {
    schema: 1,
    name: "EOS",
    version: "1.0.0",
    architecture: "x86_64",
    created: "2026-12-01T00:00:00Z",
    partitions: {
      root: {
        label: "p.lxreadonly",
        size: 300 * 2 ** 20,
        sha256: "aa".repeat(32),
        verity: { algorithm: "sha256", data_blocks: 44_032, root_hash: "bb".repeat(32) },
      },
    },
  };
  assert.deepEqual(checkManifest(base).partitions.root.verity, base.partitions.root.verity);
  const bad = (verity: unknown) => ({ ...base, partitions: { root: { ...base.partitions.root, verity } } });
  const cases: Array<[unknown, RegExp]> = [
    [{ algorithm: "sha1", data_blocks: 1, root_hash: "bb".repeat(32) }, /verity.algorithm/],
    [{ algorithm: "sha256", data_blocks: 76_800, root_hash: "bb".repeat(32) }, /room for the tree/],
    [{ algorithm: "sha256", data_blocks: 1, root_hash: "BB".repeat(32) }, /verity.root_hash/],
    [{ algorithm: "sha256", data_blocks: 1, root_hash: "bb".repeat(32), salt: "" }, /unknown key "salt"/],
  ];
  for (const [verity, message] of cases) assert.throws(() => checkManifest(bad(verity)), message);
});
