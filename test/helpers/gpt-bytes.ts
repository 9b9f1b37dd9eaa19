/**
 * Byte-level edits of a GPT written by encodeGpt, for tests of the reader:
 * change header fields or entry bytes on both sides (primary and backup) and
 * re-seal the CRCs, so that only the edited meaning is wrong.
 */
import { crc32 } from "node:zlib";
import { PartitionType, type GptTable } from "../../src/core/gpt.ts";
import { usableRange } from "../../src/core/gpt-write.ts";

export const SECTOR = 512;

/** Offsets of the GPT header fields (UEFI 2.10, table 5.5). */
export const HEADER = {
  firstUsableLba: 40,
  lastUsableLba: 48,
  entriesLba: 72,
  entryCount: 80,
  entrySize: 84,
  entriesCrc: 88,
} as const;

/** Offsets inside one partition entry. */
export const ENTRY = { typeGuid: 0, firstLba: 32, lastLba: 40, name: 56 } as const;

export interface GptEdit {
  /** Edits the header sector; CRCs are recomputed afterwards. */
  header?: (sector: Buffer) => void;
  /** Edits the entry array (as large as the header said before the edit). */
  entries?: (array: Buffer) => void;
}

/** Applies `edit` to the primary (LBA 1) and backup (last LBA) sides of `disk`. */
export function editGpt(
  disk: Buffer,
  edit: GptEdit,
  sides: Array<"primary" | "backup"> = ["primary", "backup"],
): void {
  const lastLba = Math.floor(disk.length / SECTOR) - 1;
  for (const side of sides) {
    const lba = side === "primary" ? 1 : lastLba;
    const sector = disk.subarray(lba * SECTOR, (lba + 1) * SECTOR);
    const entriesAt = Number(sector.readBigUInt64LE(HEADER.entriesLba)) * SECTOR;
    const arrayBytes = sector.readUInt32LE(HEADER.entryCount) * sector.readUInt32LE(HEADER.entrySize);
    const array = disk.subarray(entriesAt, entriesAt + arrayBytes);
    if (edit.entries) {
      edit.entries(array);
      sector.writeUInt32LE(crc32(array), HEADER.entriesCrc);
    }
    edit.header?.(sector);
    resealHeader(sector);
  }
}

/** Recomputes the header CRC32 over its declared size. */
export function resealHeader(sector: Buffer): void {
  const size = Math.min(sector.readUInt32LE(12), sector.length);
  sector.writeUInt32LE(0, 16);
  sector.writeUInt32LE(crc32(sector.subarray(0, size)), 16);
}

/** A table like the builder's: ESP, slot A, spare to the end of the usable range. */
export function sampleTable(size: number): GptTable {
  const { firstUsableLba, lastUsableLba } = usableRange(size);
  return {
    sectorSize: SECTOR,
    diskGuid: "11111111-2222-3333-4444-555555555555",
    firstUsableLba,
    lastUsableLba,
    entryCount: 128,
    entrySize: 128,
    partitions: [
      {
        number: 1,
        typeGuid: PartitionType.efiSystem,
        uniqueGuid: "A1A1A1A1-0000-4000-8000-000000000001",
        firstLba: 2048,
        lastLba: 4095,
        attributes: 0n,
        name: "p.UEFI",
      },
      {
        number: 2,
        typeGuid: PartitionType.linuxData,
        uniqueGuid: "A1A1A1A1-0000-4000-8000-000000000002",
        firstLba: 4096,
        lastLba: 8191,
        attributes: 0n,
        name: "p.lxreadonly",
      },
      {
        number: 3,
        typeGuid: PartitionType.linuxData,
        uniqueGuid: "A1A1A1A1-0000-4000-8000-000000000003",
        firstLba: 8192,
        lastLba: lastUsableLba,
        attributes: 0n,
        name: "p.spare",
      },
    ],
  };
}
