/**
 * A root slot's dm-verity part, computed on the device from the file system
 * a delta rebuilt or the chunk path assembled (src/core/verity.ts, the layout
 * veritysetup format writes). The slot is then hashed whole against the
 * signed manifest, so a tree computed differently from the build's can never
 * be booted: it fails that check.
 */
import { createHash, type Hash } from "node:crypto";
import type { FileHandle } from "node:fs/promises";
import { VERITY_BLOCK, verityTree, veritySuperblock, verityUuid } from "../../core/verity.ts";
import { readRange } from "../hash.ts";

/**
 * The dm-verity superblock and hash tree (in slot order) for a file system of
 * `dataBlocks` blocks already written at `offset`: read back in the hasher's
 * bounded blocks, so memory is the tree's, not the file system's. `slot`,
 * when given, is fed the file system's bytes as they are read: the start of
 * the slot's own sha256, so one read of the file system serves both.
 */
export async function verityTailOf(
  handle: FileHandle,
  offset: number,
  dataBlocks: number,
  slot: Hash = createHash("sha256"),
): Promise<Buffer> {
  const leaves = Buffer.alloc(dataBlocks * 32);
  let leaf = 0;
  await readRange(handle, offset, dataBlocks * VERITY_BLOCK, (bytes) => {
    for (let at = 0; at < bytes.length; at += VERITY_BLOCK, leaf++)
      createHash("sha256")
        .update(bytes.subarray(at, at + VERITY_BLOCK))
        .digest()
        .copy(leaves, leaf * 32);
    slot.update(bytes);
  });
  // The file system's own sha256 seeds the superblock's UUID; `slot` goes on past it.
  return Buffer.concat([veritySuperblock(dataBlocks, verityUuid(slot.copy().digest())), verityTree(leaves)]);
}
