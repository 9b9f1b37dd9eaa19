import { readGpt, requirePartition, findPartition, partitionRange, type GptTable } from "../core/gpt.ts";
import { FIRMWARE_LABEL, ROOT_LABEL, type ManifestPartition } from "../core/manifest.ts";
import { openBlockSource } from "./files.ts";
import { hashRange } from "./hash.ts";

export interface DiskPartitions {
  table: GptTable;
  root: ManifestPartition;
  firmware: ManifestPartition | undefined;
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
      return {
        label,
        size: range.length,
        sha256: await hashRange(source.handle, range.offset, range.length, onBytes),
      };
    };
    const root = (await describe(ROOT_LABEL, true)) as ManifestPartition;
    const firmware = await describe(FIRMWARE_LABEL, false);
    return { table, root, firmware };
  } finally {
    await source.close();
  }
}
