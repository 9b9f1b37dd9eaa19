import { readGpt, requirePartition, findPartition, partitionRange, type GptTable } from "../core/gpt.ts";
import { architectureOfRootType, type Architecture } from "../core/image/arch.ts";
import { FIRMWARE_LABEL, ROOT_LABEL, type ManifestPartition } from "../core/manifest.ts";
import { openBlockSource } from "./files.ts";
import { hashRange } from "./hash.ts";
import { DATA_PAGE, DataEnd } from "../core/zero-tail.ts";
import type { FileHandle } from "node:fs/promises";
import {
  checkVeritySuperblock,
  squashfsBytesUsed,
  VERITY_BLOCK,
  verityLayout,
  verityRootHash,
  type VerityRecord,
} from "../core/verity.ts";

export interface DiskPartitions {
  table: GptTable;
  root: ManifestPartition;
  firmware: ManifestPartition | undefined;
}

/** The architecture an EOS disk image is for, from its slot A's GPT type; undefined if it says none. */
export async function imageArchitecture(path: string): Promise<Architecture | undefined> {
  const source = await openBlockSource(path);
  try {
    const { table } = await readGpt(source);
    const slot = findPartition(table, ROOT_LABEL);
    return slot ? architectureOfRootType(slot.typeGuid) : undefined;
  } finally {
    await source.close();
  }
}

/** Size and sha256 of the updatable partitions of a disk image, found by label. */
export async function hashDiskPartitions(
  path: string,
  onBytes?: (n: number) => void,
): Promise<DiskPartitions> {
  const source = await openBlockSource(path);
  try {
    const { table } = await readGpt(source);
    const describe = async (label: string, required: boolean): Promise<ManifestPartition | undefined> => {
      const part = required ? requirePartition(table, label, path) : findPartition(table, label);
      if (!part) return undefined;
      const range = partitionRange(table, part);
      const data = new DataEnd();
      const sha256 = await hashRange(source.handle, range.offset, range.length, onBytes, (bytes, at) =>
        data.see(bytes, at),
      );
      const verity = label === ROOT_LABEL ? await readVerity(source.handle, range, path) : undefined;
      // An all-zero partition still streams one page: data_bytes is a positive count.
      const dataBytes = Math.min(range.length, Math.max(data.end, DATA_PAGE));
      return {
        label,
        size: range.length,
        sha256,
        ...(dataBytes < range.length ? { data_bytes: dataBytes } : {}),
        ...(verity ? { verity } : {}),
      };
    };
    const root = (await describe(ROOT_LABEL, true)) as ManifestPartition;
    const firmware = await describe(FIRMWARE_LABEL, false);
    return { table, root, firmware };
  } finally {
    await source.close();
  }
}

async function readAt(handle: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  const { bytesRead } = await handle.read(buf, 0, length, offset);
  return buf.subarray(0, bytesRead);
}

/**
 * The dm-verity record of a root slot, read from the slot itself: the
 * squashfs says how long it is, the superblock after it says the tree
 * follows, and the tree's top block gives the root hash. The whole slot's
 * sha256 (which covers the tree) is what makes this trustworthy.
 */
export async function readVerity(
  handle: FileHandle,
  range: { offset: number; length: number },
  source: string,
): Promise<VerityRecord | undefined> {
  const fsBytes = squashfsBytesUsed(await readAt(handle, range.offset, 96));
  if (fsBytes === undefined) return undefined;
  const layout = verityLayout(fsBytes);
  if (layout.totalBytes > range.length) return undefined;
  const sb = await readAt(handle, range.offset + layout.superblockOffset, VERITY_BLOCK);
  if (!checkVeritySuperblock(sb, layout.dataBlocks, source)) return undefined;
  const top = await readAt(handle, range.offset + layout.treeOffset, VERITY_BLOCK);
  return { algorithm: "sha256", data_blocks: layout.dataBlocks, root_hash: verityRootHash(top) };
}
