/**
 * GUID Partition Table codec (UEFI spec 2.10, chapter 5). Reads the primary
 * header and falls back to the backup when the primary is damaged; writes
 * protective MBR, both headers and both entry arrays. Partitions are found by
 * label, never by number: the label is the contract between builder, device
 * and server.
 */
import { crc32 } from "./crc32.ts";
import { EosError } from "./errors.ts";

export const GPT_SIGNATURE = "EFI PART";
export const GPT_REVISION = 0x00010000;
export const GPT_HEADER_SIZE = 92;
export const DEFAULT_ENTRY_COUNT = 128;
export const ENTRY_SIZE = 128;
/** UEFI: the entry size is 128·2ⁿ bytes; we take up to 4096. */
export const MAX_ENTRY_SIZE = 4096;
/**
 * Largest partition entry array read from a disk (the usual one is 16 KiB):
 * the header is only CRC-checked, not signed, so its sizes are bounded before
 * anything is allocated or read.
 */
export const MAX_ENTRY_ARRAY_BYTES = 1024 * 1024;

/** Well-known partition type GUIDs. */
export const PartitionType = {
  efiSystem: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
  linuxData: "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
  linuxRootX86_64: "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
  /** sgdisk 8305, "Linux root (ARM64)". */
  linuxRootArm64: "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
} as const;

export interface GptPartition {
  /** 1-based slot in the entry array, as sgdisk numbers it. */
  number: number;
  typeGuid: string;
  uniqueGuid: string;
  firstLba: number;
  lastLba: number;
  attributes: bigint;
  name: string;
}

export interface GptTable {
  sectorSize: number;
  diskGuid: string;
  firstUsableLba: number;
  lastUsableLba: number;
  entryCount: number;
  entrySize: number;
  partitions: GptPartition[];
}

export interface GptHeader {
  revision: number;
  headerSize: number;
  currentLba: number;
  backupLba: number;
  firstUsableLba: number;
  lastUsableLba: number;
  diskGuid: string;
  entriesLba: number;
  entryCount: number;
  entrySize: number;
  entriesCrc: number;
}

/** Random-access reads from a disk, an image file or a test buffer. */
export interface BlockSource {
  readonly size: number;
  read(offset: number, length: number): Promise<Buffer>;
}

export interface ByteRange {
  offset: number;
  length: number;
}

export interface GptReadResult {
  table: GptTable;
  /** Which header was valid: a damaged primary is survivable but worth reporting. */
  source: "primary" | "backup";
  problems: string[];
}

export function guidFromBytes(buf: Buffer, offset = 0): string {
  const hex = (start: number, end: number, reverse: boolean): string => {
    const bytes = [...buf.subarray(offset + start, offset + end)];
    if (reverse) bytes.reverse();
    return bytes.map((b) => b.toString(16).padStart(2, "0")).join("");
  };
  return [hex(0, 4, true), hex(4, 6, true), hex(6, 8, true), hex(8, 10, false), hex(10, 16, false)]
    .join("-")
    .toUpperCase();
}

export function guidToBytes(guid: string): Buffer {
  const m = /^([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{12})$/i.exec(guid);
  if (!m) throw new EosError("GPT", `not a GUID: ${JSON.stringify(guid)}`);
  const part = (i: number, reverse: boolean): Buffer => {
    const b = Buffer.from(m[i] as string, "hex");
    return reverse ? b.reverse() : b;
  };
  return Buffer.concat([part(1, true), part(2, true), part(3, true), part(4, false), part(5, false)]);
}

function u64(buf: Buffer, offset: number): number {
  const v = buf.readBigUInt64LE(offset);
  if (v > BigInt(Number.MAX_SAFE_INTEGER))
    throw new EosError("GPT", `64-bit field at ${offset} is too large`);
  return Number(v);
}

/**
 * Decodes and checks the header at `expectedLba`. With `diskSectors`, the
 * usable range and the entry array must also lie on a disk of that many
 * sectors.
 */
export function decodeHeader(sector: Buffer, expectedLba: number, diskSectors?: number): GptHeader {
  if (sector.length < GPT_HEADER_SIZE || sector.toString("latin1", 0, 8) !== GPT_SIGNATURE) {
    throw new EosError("GPT", `no GPT header signature at LBA ${expectedLba}`);
  }
  const headerSize = sector.readUInt32LE(12);
  if (headerSize < GPT_HEADER_SIZE || headerSize > sector.length) {
    throw new EosError("GPT", `GPT header at LBA ${expectedLba} has an invalid size ${headerSize}`);
  }
  const copy = Buffer.from(sector.subarray(0, headerSize));
  const storedCrc = copy.readUInt32LE(16);
  copy.writeUInt32LE(0, 16);
  if (crc32(copy) !== storedCrc)
    throw new EosError("GPT", `GPT header at LBA ${expectedLba} fails its CRC32`);
  const header: GptHeader = {
    revision: sector.readUInt32LE(8),
    headerSize,
    currentLba: u64(sector, 24),
    backupLba: u64(sector, 32),
    firstUsableLba: u64(sector, 40),
    lastUsableLba: u64(sector, 48),
    diskGuid: guidFromBytes(sector, 56),
    entriesLba: u64(sector, 72),
    entryCount: sector.readUInt32LE(80),
    entrySize: sector.readUInt32LE(84),
    entriesCrc: sector.readUInt32LE(88),
  };
  if (header.currentLba !== expectedLba) {
    throw new EosError("GPT", `GPT header at LBA ${expectedLba} claims to be at LBA ${header.currentLba}`);
  }
  checkHeaderBounds(header, expectedLba, diskSectors, sector.length);
  return header;
}

/** Is `n` 128·2ⁿ and at most MAX_ENTRY_SIZE (UEFI 2.10 §5.3.2, SizeOfPartitionEntry)? */
export function isValidEntrySize(n: number): boolean {
  return Number.isInteger(n) && n >= ENTRY_SIZE && n <= MAX_ENTRY_SIZE && (n & (n - 1)) === 0;
}

/**
 * The header's sizes and LBAs as the spec bounds them, checked before the
 * entry array is read: the array must be small, lie on the disk, and stay out
 * of the usable range and the header's own sector.
 */
function checkHeaderBounds(
  header: GptHeader,
  lba: number,
  diskSectors: number | undefined,
  sectorSize: number,
): void {
  const fail = (what: string): never => {
    throw new EosError("GPT", `GPT header at LBA ${lba}: ${what}`);
  };
  if (!isValidEntrySize(header.entrySize)) {
    fail(`partition entry size ${header.entrySize} is not 128·2ⁿ bytes up to ${MAX_ENTRY_SIZE}`);
  }
  const arrayBytes = header.entryCount * header.entrySize;
  if (arrayBytes > MAX_ENTRY_ARRAY_BYTES) {
    fail(
      `${header.entryCount} entries of ${header.entrySize} bytes (${arrayBytes} bytes) exceed the ${MAX_ENTRY_ARRAY_BYTES}-byte limit of an entry array`,
    );
  }
  const { firstUsableLba: first, lastUsableLba: last, entriesLba } = header;
  if (first < 1 || first > last) fail(`usable range LBA ${first}..${last} is empty or covers the MBR`);
  if (lba >= first && lba <= last) fail(`the header lies inside the usable range LBA ${first}..${last}`);
  const arrayEnd = entriesLba + Math.ceil(arrayBytes / sectorSize) - 1;
  if (entriesLba < 1 || (arrayBytes > 0 && entriesLba <= lba && arrayEnd >= lba)) {
    fail(`entry array at LBA ${entriesLba} overlaps the MBR or the header`);
  }
  if (arrayBytes > 0 && entriesLba <= last && arrayEnd >= first) {
    fail(`entry array LBA ${entriesLba}..${arrayEnd} overlaps the usable range LBA ${first}..${last}`);
  }
  if (diskSectors !== undefined) {
    if (last >= diskSectors)
      fail(`usable range ends at LBA ${last}, past the disk's last LBA ${diskSectors - 1}`);
    if (arrayEnd >= diskSectors)
      fail(`entry array ends at LBA ${arrayEnd}, past the disk's last LBA ${diskSectors - 1}`);
  }
}

/** A string with a UTF-16 surrogate that is not part of a pair cannot be a label. */
export function hasLoneSurrogate(text: string): boolean {
  return /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(text);
}

export function decodeEntries(array: Buffer, header: GptHeader): GptPartition[] {
  if (array.length < header.entryCount * header.entrySize)
    throw new EosError("GPT", "GPT partition entry array is shorter than its header says");
  if (crc32(array) !== header.entriesCrc)
    throw new EosError("GPT", "GPT partition entry array fails its CRC32");
  const partitions: GptPartition[] = [];
  for (let i = 0; i < header.entryCount; i++) {
    const at = i * header.entrySize;
    const typeGuid = guidFromBytes(array, at);
    if (typeGuid === "00000000-0000-0000-0000-000000000000") continue;
    const nameBytes = array.subarray(at + 56, at + 128);
    let end = 0;
    while (end < nameBytes.length && nameBytes.readUInt16LE(end) !== 0) end += 2;
    const partition: GptPartition = {
      number: i + 1,
      typeGuid,
      uniqueGuid: guidFromBytes(array, at + 16),
      firstLba: u64(array, at + 32),
      lastLba: u64(array, at + 40),
      attributes: array.readBigUInt64LE(at + 48),
      name: nameBytes.subarray(0, end).toString("utf16le"),
    };
    const what = `GPT partition entry ${partition.number}`;
    if (hasLoneSurrogate(partition.name)) {
      throw new EosError("GPT", `${what}: its label is not valid UTF-16 (a lone surrogate)`);
    }
    if (partition.lastLba < partition.firstLba) {
      throw new EosError(
        "GPT",
        `${what} (${partition.name}): ends at LBA ${partition.lastLba}, before it starts at LBA ${partition.firstLba}`,
      );
    }
    if (partition.firstLba < header.firstUsableLba || partition.lastLba > header.lastUsableLba) {
      throw new EosError(
        "GPT",
        `${what} (${partition.name}): LBA ${partition.firstLba}..${partition.lastLba} lies outside the usable range LBA ${header.firstUsableLba}..${header.lastUsableLba}`,
      );
    }
    partitions.push(partition);
  }
  const sorted = [...partitions].sort((a, b) => a.firstLba - b.firstLba);
  for (let i = 1; i < sorted.length; i++) {
    const [a, b] = [sorted[i - 1] as GptPartition, sorted[i] as GptPartition];
    if (b.firstLba <= a.lastLba) {
      throw new EosError(
        "GPT",
        `GPT partition entries ${a.number} and ${b.number} overlap at LBA ${b.firstLba}`,
      );
    }
  }
  return partitions;
}

function tableFrom(header: GptHeader, partitions: GptPartition[], sectorSize: number): GptTable {
  return {
    sectorSize,
    diskGuid: header.diskGuid,
    firstUsableLba: header.firstUsableLba,
    lastUsableLba: header.lastUsableLba,
    entryCount: header.entryCount,
    entrySize: header.entrySize,
    partitions,
  };
}

async function readSide(source: BlockSource, lba: number, sectorSize: number): Promise<GptTable> {
  const diskSectors = Math.floor(source.size / sectorSize);
  const header = decodeHeader(await source.read(lba * sectorSize, sectorSize), lba, diskSectors);
  const array = await source.read(header.entriesLba * sectorSize, header.entryCount * header.entrySize);
  return tableFrom(header, decodeEntries(array, header), sectorSize);
}

export async function readGpt(source: BlockSource, sectorSize = 512): Promise<GptReadResult> {
  const lastLba = Math.floor(source.size / sectorSize) - 1;
  if (lastLba < 3) throw new EosError("GPT", `disk of ${source.size} bytes is too small to hold a GPT`);
  const problems: string[] = [];
  let primary: GptTable | undefined;
  try {
    primary = await readSide(source, 1, sectorSize);
  } catch (error) {
    problems.push(`primary: ${(error as Error).message}`);
  }
  let backup: GptTable | undefined;
  try {
    backup = await readSide(source, lastLba, sectorSize);
  } catch (error) {
    problems.push(`backup: ${(error as Error).message}`);
  }
  if (primary) return { table: primary, source: "primary", problems };
  if (backup) return { table: backup, source: "backup", problems };
  throw new EosError("GPT", `no valid GPT: ${problems.join("; ")}`, {
    hint: "is this a GPT disk image? `sgdisk -v` shows what is wrong",
  });
}

export function findPartition(table: GptTable, label: string): GptPartition | undefined {
  return table.partitions.find((p) => p.name === label);
}

export function requirePartition(table: GptTable, label: string, what = "disk"): GptPartition {
  const found = findPartition(table, label);
  if (!found) {
    const labels = table.partitions.map((p) => p.name || `#${p.number}`).join(", ");
    throw new EosError("GPT", `${what} has no partition labelled ${label} (found: ${labels || "none"})`);
  }
  return found;
}

export function partitionRange(table: GptTable, partition: GptPartition): ByteRange {
  return {
    offset: partition.firstLba * table.sectorSize,
    length: (partition.lastLba - partition.firstLba + 1) * table.sectorSize,
  };
}
