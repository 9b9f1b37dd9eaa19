/**
 * The dm-verity layout of a root slot (docs/boot-control.md, "Runtime
 * integrity"): the squashfs, zero-padded to whole 4 KiB blocks, then a
 * veritysetup superblock, then the hash tree, top level first. One layout,
 * no salt and sha256 throughout, so that the signed manifest and the kernel
 * command line only need the root hash and the number of data blocks.
 */
import { createHash } from "node:crypto";
import { EosError } from "./errors.ts";

export const VERITY_BLOCK = 4096;
const HASH_BYTES = 32;
const SQUASHFS_MAGIC = 0x73717368; // "hsqs"
const VERITY_MAGIC = Buffer.from("verity\0\0", "latin1");

export interface VerityRecord {
  algorithm: "sha256";
  data_blocks: number;
  root_hash: string;
}

/** Bytes the squashfs at the start of `head` (its first 96 bytes or more) uses, or undefined when it is no squashfs. */
export function squashfsBytesUsed(head: Buffer): number | undefined {
  if (head.length < 96 || head.readUInt32LE(0) !== SQUASHFS_MAGIC) return undefined;
  const used = head.readBigUInt64LE(40);
  return used > BigInt(Number.MAX_SAFE_INTEGER) || used === 0n ? undefined : Number(used);
}

/** Blocks of each hash tree level for `dataBlocks` blocks of data, bottom level first. */
function levelBlocks(dataBlocks: number): number[] {
  const perBlock = VERITY_BLOCK / HASH_BYTES;
  const levels: number[] = [];
  let n = dataBlocks;
  do {
    n = Math.ceil(n / perBlock);
    levels.push(n);
  } while (n > 1);
  return levels;
}

/** Where the superblock and tree sit for a file system of `fsBytes`, and how many bytes they all take. */
export function verityLayout(fsBytes: number): {
  dataBlocks: number;
  superblockOffset: number;
  treeOffset: number;
  totalBytes: number;
} {
  const dataBlocks = Math.ceil(fsBytes / VERITY_BLOCK);
  const superblockOffset = dataBlocks * VERITY_BLOCK;
  const treeBlocks = levelBlocks(dataBlocks).reduce((a, b) => a + b, 0);
  return {
    dataBlocks,
    superblockOffset,
    treeOffset: superblockOffset + VERITY_BLOCK,
    totalBytes: superblockOffset + VERITY_BLOCK + treeBlocks * VERITY_BLOCK,
  };
}

/**
 * Checks a veritysetup superblock (struct verity_sb) against the one layout
 * EOS uses. Returns false when `block` holds no superblock at all; a
 * superblock of another shape is an error, not a slot without verity.
 */
export function checkVeritySuperblock(block: Buffer, dataBlocks: number, source: string): boolean {
  if (block.length < 512 || !block.subarray(0, 8).equals(VERITY_MAGIC)) return false;
  const algorithm = block.subarray(32, 64).toString("latin1").replace(/\0+$/, "");
  const found = {
    version: block.readUInt32LE(8),
    hash_type: block.readUInt32LE(12),
    algorithm,
    data_block_size: block.readUInt32LE(64),
    hash_block_size: block.readUInt32LE(68),
    data_blocks: Number(block.readBigUInt64LE(72)),
    salt_size: block.readUInt16LE(80),
  };
  const want = {
    version: 1,
    hash_type: 1,
    algorithm: "sha256",
    data_block_size: VERITY_BLOCK,
    hash_block_size: VERITY_BLOCK,
    data_blocks: dataBlocks,
    salt_size: 0,
  };
  for (const [key, value] of Object.entries(want)) {
    if (found[key as keyof typeof found] !== value)
      throw new EosError(
        "MANIFEST",
        `${source}: dm-verity superblock has ${key} ${JSON.stringify(found[key as keyof typeof found])}, EOS uses ${JSON.stringify(value)}`,
        { hint: "build the slot with eos build, which runs veritysetup format with the EOS layout" },
      );
  }
  return true;
}

/** The root hash of a tree without salt: the sha256 of its single top-level block. */
export function verityRootHash(topBlock: Buffer): string {
  if (topBlock.length !== VERITY_BLOCK)
    throw new EosError("MANIFEST", `dm-verity top block is ${topBlock.length} bytes, not ${VERITY_BLOCK}`);
  return createHash("sha256").update(topBlock).digest("hex");
}

/**
 * The value GRUB and kexec put on the kernel command line as
 * `eos.verity=`, and grubenv keeps per slot: ROOT_HASH:DATA_BLOCKS.
 */
export function verityParameter(record: VerityRecord): string {
  return `${record.root_hash}:${record.data_blocks}`;
}

export function parseVerityParameter(value: string): VerityRecord | undefined {
  const m = /^([0-9a-f]{64}):([1-9][0-9]{0,12})$/.exec(value);
  return m ? { algorithm: "sha256", root_hash: m[1] as string, data_blocks: Number(m[2]) } : undefined;
}

/** A UUID for the superblock from the file system's own hash, so that the same input builds the same bytes. */
export function verityUuid(seed: Buffer): string {
  const h = createHash("sha256").update(seed).digest("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/** The superblock veritysetup format writes for the EOS layout (struct verity_sb, padded to a block). */
export function veritySuperblock(dataBlocks: number, uuid: string): Buffer {
  const block = Buffer.alloc(VERITY_BLOCK);
  VERITY_MAGIC.copy(block, 0);
  block.writeUInt32LE(1, 8);
  block.writeUInt32LE(1, 12);
  Buffer.from(uuid.replace(/-/g, ""), "hex").copy(block, 16);
  block.write("sha256", 32, "latin1");
  block.writeUInt32LE(VERITY_BLOCK, 64);
  block.writeUInt32LE(VERITY_BLOCK, 68);
  block.writeBigUInt64LE(BigInt(dataBlocks), 72);
  return block;
}

/**
 * The hash tree over data blocks whose sha256s are `leaves` (32 bytes each,
 * in order), as veritysetup lays it out: each level's hashes packed into
 * zero-padded 4 KiB blocks, the top level (one block) first. Its root hash
 * is verityRootHash of the first block.
 */
export function verityTree(leaves: Buffer): Buffer {
  if (leaves.length === 0 || leaves.length % HASH_BYTES !== 0)
    throw new EosError("DELTA", `dm-verity leaves are ${leaves.length} bytes, not a whole number of hashes`);
  const levels: Buffer[] = [];
  let hashes = leaves;
  for (;;) {
    const blocks = Math.ceil(hashes.length / VERITY_BLOCK);
    const level = Buffer.alloc(blocks * VERITY_BLOCK);
    hashes.copy(level);
    levels.push(level);
    if (blocks === 1) break;
    const next = Buffer.alloc(blocks * HASH_BYTES);
    for (let i = 0; i < blocks; i++)
      createHash("sha256")
        .update(level.subarray(i * VERITY_BLOCK, (i + 1) * VERITY_BLOCK))
        .digest()
        .copy(next, i * HASH_BYTES);
    hashes = next;
  }
  return Buffer.concat(levels.reverse());
}
