/**
 * A root slot's stream from its file system alone: the file system's bytes
 * as they come, then the dm-verity superblock and hash tree computed from
 * them (src/core/verity.ts, the layout veritysetup format writes), then
 * zeros to the slot's recorded size. The slot writer hashes the whole
 * stream against the signed manifest, so a tree computed differently from
 * the build's can never be booted: it fails that check.
 */
import { createHash } from "node:crypto";
import { EosError } from "../../core/errors.ts";
import { VERITY_BLOCK, verityTree, veritySuperblock, verityUuid } from "../../core/verity.ts";

export async function* withVerityTree(
  fs: AsyncIterable<Buffer> | Iterable<Buffer>,
  dataBlocks: number,
  total: number,
): AsyncGenerator<Buffer> {
  const fsBytes = dataBlocks * VERITY_BLOCK;
  const leaves = Buffer.alloc(dataBlocks * 32);
  const whole = createHash("sha256");
  let pending: Buffer = Buffer.alloc(0);
  let seen = 0;
  let leaf = 0;
  for await (const chunk of fs) {
    seen += chunk.length;
    if (seen > fsBytes)
      throw new EosError(
        "DELTA",
        `the file system stream is longer than its ${fsBytes} bytes (${dataBlocks} blocks)`,
      );
    whole.update(chunk);
    const data = pending.length > 0 ? Buffer.concat([pending, chunk]) : chunk;
    const full = data.length - (data.length % VERITY_BLOCK);
    for (let at = 0; at < full; at += VERITY_BLOCK, leaf++)
      createHash("sha256")
        .update(data.subarray(at, at + VERITY_BLOCK))
        .digest()
        .copy(leaves, leaf * 32);
    // A copy: the producer may reuse the chunk's memory once it is handed on.
    pending = Buffer.from(data.subarray(full));
    yield chunk;
  }
  if (seen !== fsBytes)
    throw new EosError("DELTA", `the file system stream ended after ${seen} of its ${fsBytes} bytes`);
  const superblock = veritySuperblock(dataBlocks, verityUuid(whole.digest()));
  const tree = verityTree(leaves);
  yield superblock;
  yield tree;
  let left = total - fsBytes - superblock.length - tree.length;
  if (left < 0)
    throw new EosError(
      "DELTA",
      `the file system and its dm-verity tree do not fit the slot's ${total} bytes`,
    );
  const zeros = Buffer.alloc(Math.min(left, 1 << 20));
  for (; left > 0; left -= zeros.length) yield left >= zeros.length ? zeros : zeros.subarray(0, left);
}
