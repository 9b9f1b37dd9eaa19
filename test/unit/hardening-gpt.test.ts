/**
 * Issue 11 (hardening), finding 5: the GPT reader bounds what a header may
 * declare before it reads the entry array, and refuses entries the UEFI spec
 * does not allow, with a GPT error naming what is wrong.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readGpt, type BlockSource } from "../../src/core/gpt.ts";
import { encodeGpt } from "../../src/core/gpt-write.ts";
import { EosError } from "../../src/core/errors.ts";
import { memDisk } from "../helpers/memdisk.ts";
import { ENTRY, HEADER, SECTOR, editGpt, sampleTable } from "../helpers/gpt-bytes.ts";

const MiB = 1024 * 1024;

function writtenDisk(size = 8 * MiB) {
  const disk = memDisk(size);
  disk.apply(encodeGpt(sampleTable(size), size));
  return disk;
}

/** The disk, and the largest read anyone asked of it. */
function recording(disk: BlockSource): BlockSource & { largestRead: () => number } {
  let largest = 0;
  return {
    size: disk.size,
    read: (offset, length) => {
      largest = Math.max(largest, length);
      return disk.read(offset, length);
    },
    largestRead: () => largest,
  };
}

async function refused(disk: BlockSource, pattern: RegExp): Promise<void> {
  await assert.rejects(readGpt(disk), (error: unknown) => {
    assert.ok(error instanceof EosError, `an EosError, got ${String(error)}`);
    assert.equal(error.code, "GPT");
    assert.match(error.message, pattern);
    return true;
  });
}

test("a header declaring a 512 MiB entry is refused before the array is read", async () => {
  const disk = writtenDisk();
  editGpt(disk.buf, {
    header: (h) => {
      h.writeUInt32LE(1, HEADER.entryCount);
      h.writeUInt32LE(512 * MiB, HEADER.entrySize);
    },
  });
  const source = recording(disk);
  await refused(source, /partition entry size 536870912 is not 128·2ⁿ bytes up to 4096/);
  assert.ok(source.largestRead() <= SECTOR, `largest read ${source.largestRead()} bytes`);
});

test("entry sizes other than 128·2ⁿ ≤ 4096 and arrays over 1 MiB are refused", async () => {
  for (const [count, size, pattern] of [
    [128, 136, /entry size 136 is not 128·2ⁿ/],
    [128, 8192, /entry size 8192 is not 128·2ⁿ/],
    [16384, 128, /16384 entries of 128 bytes \(2097152 bytes\) exceed the 1048576-byte limit/],
    [1024, 4096, /exceed the 1048576-byte limit/],
  ] as const) {
    const disk = writtenDisk();
    editGpt(disk.buf, {
      header: (h) => {
        h.writeUInt32LE(count, HEADER.entryCount);
        h.writeUInt32LE(size, HEADER.entrySize);
      },
    });
    const source = recording(disk);
    await refused(source, pattern);
    assert.ok(source.largestRead() <= MiB);
  }
});

test("a usable range or entry array past the disk end is refused", async () => {
  const past = writtenDisk();
  editGpt(past.buf, {
    header: (h) => h.writeBigUInt64LE(BigInt(past.size / SECTOR + 100), HEADER.lastUsableLba),
  });
  await refused(past, /usable range ends at LBA \d+, past the disk's last LBA 16383/);

  const array = writtenDisk();
  editGpt(array.buf, { header: (h) => h.writeBigUInt64LE(1n << 40n, HEADER.entriesLba) });
  await refused(array, /entry array ends at LBA \d+, past the disk's last LBA/);

  const inside = writtenDisk();
  editGpt(inside.buf, { header: (h) => h.writeBigUInt64LE(3000n, HEADER.entriesLba) });
  await refused(inside, /entry array LBA 3000\.\.3031 overlaps the usable range/);

  const onHeader = writtenDisk();
  editGpt(onHeader.buf, { header: (h) => h.writeBigUInt64LE(1n, HEADER.entriesLba) }, ["primary"]);
  editGpt(onHeader.buf, { header: (h) => h.writeBigUInt64LE(16380n, HEADER.entriesLba) }, ["backup"]);
  await refused(
    onHeader,
    /primary: GPT header at LBA 1: entry array at LBA 1 overlaps the MBR or the header.*backup: .*overlaps the MBR or the header/,
  );
});

test("an empty usable range, or one holding the header, is refused", async () => {
  const empty = writtenDisk();
  editGpt(empty.buf, { header: (h) => h.writeBigUInt64LE(20000n, HEADER.firstUsableLba) });
  await refused(empty, /usable range LBA 20000\.\.16350 is empty or covers the MBR/);

  const holding = writtenDisk();
  editGpt(holding.buf, { header: (h) => h.writeBigUInt64LE(16383n, HEADER.lastUsableLba) }, ["backup"]);
  editGpt(holding.buf, { header: (h) => h.writeBigUInt64LE(1n, HEADER.firstUsableLba) }, ["primary"]);
  await refused(
    holding,
    /primary: GPT header at LBA 1: the header lies inside the usable range LBA 1\.\.16350.*backup: GPT header at LBA 16383: the header lies inside the usable range LBA 34\.\.16383/,
  );
});

test("a partition ending before it starts is refused, naming the entry", async () => {
  const disk = writtenDisk();
  editGpt(disk.buf, {
    entries: (a) => {
      a.writeBigUInt64LE(5000n, 128 + ENTRY.firstLba);
      a.writeBigUInt64LE(4999n, 128 + ENTRY.lastLba);
    },
  });
  await refused(
    disk,
    /GPT partition entry 2 \(p\.lxreadonly\): ends at LBA 4999, before it starts at LBA 5000/,
  );
});

test("a partition outside the usable range or past the disk end is refused", async () => {
  const disk = writtenDisk();
  editGpt(disk.buf, {
    entries: (a) => a.writeBigUInt64LE(BigInt(disk.size / SECTOR + 10), 256 + ENTRY.lastLba),
  });
  await refused(
    disk,
    /GPT partition entry 3 \(p\.spare\): LBA 8192\.\.16394 lies outside the usable range LBA 34\.\.16350/,
  );

  const low = writtenDisk();
  editGpt(low.buf, { entries: (a) => a.writeBigUInt64LE(1n, ENTRY.firstLba) });
  await refused(low, /GPT partition entry 1 \(p\.UEFI\): LBA 1\.\.4095 lies outside the usable range/);
});

test("overlapping partitions are refused", async () => {
  const disk = writtenDisk();
  editGpt(disk.buf, { entries: (a) => a.writeBigUInt64LE(4000n, 128 + ENTRY.firstLba) });
  await refused(disk, /GPT partition entries 1 and 2 overlap at LBA 4000/);
});

test("a label with a lone surrogate is refused", async () => {
  const disk = writtenDisk();
  editGpt(disk.buf, { entries: (a) => a.writeUInt16LE(0xd800, 128 + ENTRY.name) });
  await refused(disk, /GPT partition entry 2: its label is not valid UTF-16 \(a lone surrogate\)/);
  const table = sampleTable(8 * MiB);
  table.partitions[0]!.name = "p.\udc00";
  assert.throws(() => encodeGpt(table, 8 * MiB), { code: "GPT", message: /lone surrogate/ });
});

test("a bad primary still falls back to a valid backup, and says why", async () => {
  const disk = writtenDisk();
  editGpt(disk.buf, { entries: (a) => a.writeBigUInt64LE(4000n, 128 + ENTRY.firstLba) }, ["primary"]);
  const { source, problems, table } = await readGpt(disk);
  assert.equal(source, "backup");
  assert.match(problems.join(), /primary: GPT partition entries 1 and 2 overlap/);
  assert.equal(table.partitions[1]?.firstLba, 4096);
});
