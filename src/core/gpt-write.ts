/** Writing a GPT: protective MBR, both headers and entry arrays, as block writes. */
// Not node:zlib's crc32: Node 18 (Debian 12's nodejs, on images with eos.node: debian) lacks it.
import { crc32 } from "./crc32.ts";
import { EosError } from "./errors.ts";
import {
  hasLoneSurrogate,
  isValidEntrySize,
  MAX_ENTRY_ARRAY_BYTES,
  MAX_ENTRY_SIZE,
  DEFAULT_ENTRY_COUNT,
  ENTRY_SIZE,
  GPT_HEADER_SIZE,
  GPT_REVISION,
  GPT_SIGNATURE,
  guidToBytes,
  type GptTable,
} from "./gpt.ts";

export interface BlockWrite {
  offset: number;
  data: Buffer;
}

function encodeEntries(table: GptTable): Buffer {
  const array = Buffer.alloc(table.entryCount * table.entrySize);
  for (const p of table.partitions) {
    if (p.number < 1 || p.number > table.entryCount)
      throw new EosError("GPT", `partition number ${p.number} out of range`);
    const at = (p.number - 1) * table.entrySize;
    guidToBytes(p.typeGuid).copy(array, at);
    guidToBytes(p.uniqueGuid).copy(array, at + 16);
    array.writeBigUInt64LE(BigInt(p.firstLba), at + 32);
    array.writeBigUInt64LE(BigInt(p.lastLba), at + 40);
    array.writeBigUInt64LE(p.attributes, at + 48);
    if (hasLoneSurrogate(p.name))
      throw new EosError("GPT", `partition ${p.number}: its label is not valid UTF-16 (a lone surrogate)`);
    const name = Buffer.from(p.name, "utf16le");
    if (name.length > 72)
      throw new EosError("GPT", `partition name ${JSON.stringify(p.name)} is longer than 36 characters`);
    name.copy(array, at + 56);
  }
  return array;
}

function encodeHeader(
  table: GptTable,
  currentLba: number,
  backupLba: number,
  entriesLba: number,
  entriesCrc: number,
): Buffer {
  const sector = Buffer.alloc(table.sectorSize);
  sector.write(GPT_SIGNATURE, 0, "latin1");
  sector.writeUInt32LE(GPT_REVISION, 8);
  sector.writeUInt32LE(GPT_HEADER_SIZE, 12);
  sector.writeBigUInt64LE(BigInt(currentLba), 24);
  sector.writeBigUInt64LE(BigInt(backupLba), 32);
  sector.writeBigUInt64LE(BigInt(table.firstUsableLba), 40);
  sector.writeBigUInt64LE(BigInt(table.lastUsableLba), 48);
  guidToBytes(table.diskGuid).copy(sector, 56);
  sector.writeBigUInt64LE(BigInt(entriesLba), 72);
  sector.writeUInt32LE(table.entryCount, 80);
  sector.writeUInt32LE(table.entrySize, 84);
  sector.writeUInt32LE(entriesCrc, 88);
  sector.writeUInt32LE(crc32(sector.subarray(0, GPT_HEADER_SIZE)), 16);
  return sector;
}

function protectiveMbr(totalSectors: number, sectorSize: number): Buffer {
  const mbr = Buffer.alloc(sectorSize);
  const rec = 446;
  mbr[rec + 1] = 0x00;
  mbr[rec + 2] = 0x02;
  mbr[rec + 3] = 0x00;
  mbr[rec + 4] = 0xee;
  mbr[rec + 5] = 0xff;
  mbr[rec + 6] = 0xff;
  mbr[rec + 7] = 0xff;
  mbr.writeUInt32LE(1, rec + 8);
  mbr.writeUInt32LE(Math.min(totalSectors - 1, 0xffffffff), rec + 12);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  return mbr;
}

/** Sectors the entry array occupies. */
export function entryArraySectors(table: Pick<GptTable, "entryCount" | "entrySize" | "sectorSize">): number {
  return Math.ceil((table.entryCount * table.entrySize) / table.sectorSize);
}

/** Usable LBA range for a disk of this size with the standard layout. */
export function usableRange(diskSize: number, sectorSize = 512, entryCount = DEFAULT_ENTRY_COUNT) {
  const totalSectors = Math.floor(diskSize / sectorSize);
  const arraySectors = entryArraySectors({ entryCount, entrySize: ENTRY_SIZE, sectorSize });
  return { firstUsableLba: 2 + arraySectors, lastUsableLba: totalSectors - 2 - arraySectors };
}

/**
 * Everything that makes up the table on a disk of `diskSize` bytes: the
 * protective MBR, primary header and array at the start, backup array and
 * header at the end. The backup always sits at the disk's last LBA, so this
 * also "moves the backup header to the end" after a disk has grown.
 */
export function encodeGpt(table: GptTable, diskSize: number): BlockWrite[] {
  const { sectorSize } = table;
  const totalSectors = Math.floor(diskSize / sectorSize);
  const lastLba = totalSectors - 1;
  if (!isValidEntrySize(table.entrySize) || table.entryCount * table.entrySize > MAX_ENTRY_ARRAY_BYTES) {
    throw new EosError(
      "GPT",
      `entry array of ${table.entryCount} × ${table.entrySize} bytes: entries must be 128·2ⁿ bytes up to ${MAX_ENTRY_SIZE}, the array at most ${MAX_ENTRY_ARRAY_BYTES} bytes`,
    );
  }
  const arraySectors = entryArraySectors(table);
  if (table.lastUsableLba > lastLba - 1 - arraySectors || table.firstUsableLba < 2 + arraySectors) {
    throw new EosError("GPT", "usable range overlaps the GPT structures");
  }
  const sorted = [...table.partitions].sort((a, b) => a.firstLba - b.firstLba);
  sorted.forEach((p, i) => {
    if (p.firstLba > p.lastLba) throw new EosError("GPT", `partition ${p.number} ends before it starts`);
    if (p.firstLba < table.firstUsableLba || p.lastLba > table.lastUsableLba) {
      throw new EosError("GPT", `partition ${p.number} (${p.name}) lies outside the usable range`);
    }
    const next = sorted[i + 1];
    if (next && next.firstLba <= p.lastLba)
      throw new EosError("GPT", `partitions ${p.number} and ${next.number} overlap`);
  });
  const array = encodeEntries(table);
  const arrayCrc = crc32(array);
  const backupArrayLba = lastLba - arraySectors;
  const arrayPadded = Buffer.alloc(arraySectors * sectorSize);
  array.copy(arrayPadded);
  return [
    { offset: 0, data: protectiveMbr(totalSectors, sectorSize) },
    { offset: sectorSize, data: encodeHeader(table, 1, lastLba, 2, arrayCrc) },
    { offset: 2 * sectorSize, data: arrayPadded },
    { offset: backupArrayLba * sectorSize, data: arrayPadded },
    { offset: lastLba * sectorSize, data: encodeHeader(table, lastLba, 1, backupArrayLba, arrayCrc) },
  ];
}
