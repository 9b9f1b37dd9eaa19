/**
 * A root slot's dm-verity part, computed on the device from the file system
 * a delta rebuilt (src/core/verity.ts, the layout veritysetup format
 * writes). The slot is then hashed whole against the signed manifest, so a
 * tree computed differently from the build's can never be booted: it fails
 * that check.
 */
import { createHash } from "node:crypto";
import type { FileHandle } from "node:fs/promises";
import { VERITY_BLOCK, verityTree, veritySuperblock, verityUuid } from "../../core/verity.ts";
import { hashRange } from "../hash.ts";

/**
 * The dm-verity superblock and hash tree (in slot order) for a file system of
 * `dataBlocks` blocks already written at `offset`: read back in the hasher's
 * bounded blocks, so memory is the tree's, not the file system's.
 */
export async function verityTailOf(handle: FileHandle, offset: number, dataBlocks: number): Promise<Buffer> {
  const leaves = Buffer.alloc(dataBlocks * 32);
  let leaf = 0;
  const whole = await hashRange(handle, offset, dataBlocks * VERITY_BLOCK, undefined, (bytes) => {
    for (let at = 0; at < bytes.length; at += VERITY_BLOCK, leaf++)
      createHash("sha256")
        .update(bytes.subarray(at, at + VERITY_BLOCK))
        .digest()
        .copy(leaves, leaf * 32);
  });
  return Buffer.concat([
    veritySuperblock(dataBlocks, verityUuid(Buffer.from(whole, "hex"))),
    verityTree(leaves),
  ]);
}
