import { test } from "node:test";
import assert from "node:assert/strict";
import {
  readGpt,
  findPartition,
  partitionRange,
  guidFromBytes,
  guidToBytes,
  PartitionType,
  type GptTable,
} from "../../src/core/gpt.ts";
import { encodeGpt, usableRange } from "../../src/core/gpt-write.ts";
import { memDisk } from "../helpers/memdisk.ts";
import { sampleTable as sharedSampleTable } from "../helpers/gpt-bytes.ts";

const MiB = 1024 * 1024;

function flip(buf: Buffer, at: number): void {
  buf.writeUInt8(buf.readUInt8(at) ^ 0xff, at);
}

/** The shared sample with the spare marked read-only (bit 60), so that round trips cover attributes. */
function sampleTable(size: number): GptTable {
  const table = sharedSampleTable(size);
  return {
    ...table,
    partitions: table.partitions.map((p) => (p.number === 3 ? { ...p, attributes: 1n << 60n } : p)),
  };
}

test("GUIDs use the mixed-endian on-disk encoding", () => {
  const guid = PartitionType.efiSystem;
  const bytes = guidToBytes(guid);
  assert.equal(bytes.toString("hex"), "28732ac11ff8d211ba4b00a0c93ec93b");
  assert.equal(guidFromBytes(bytes), guid);
  assert.throws(() => guidToBytes("not-a-guid"), /not a GUID/);
});

test("a written table reads back identically, with labels and byte ranges", async () => {
  const disk = memDisk(8 * MiB);
  const table = sampleTable(disk.size);
  disk.apply(encodeGpt(table, disk.size));
  const { table: read, source, problems } = await readGpt(disk);
  assert.equal(source, "primary");
  assert.deepEqual(problems, []);
  assert.deepEqual(read, table);
  const root = findPartition(read, "p.lxreadonly");
  assert.ok(root);
  assert.deepEqual(partitionRange(read, root), { offset: 4096 * 512, length: 4096 * 512 });
  assert.equal(findPartition(read, "p.lxrootclone1"), undefined);
  assert.equal(disk.buf[510], 0x55);
  assert.equal(disk.buf[450], 0xee, "protective MBR type");
});

test("a damaged primary header falls back to the backup and says so", async () => {
  const disk = memDisk(8 * MiB);
  const table = sampleTable(disk.size);
  disk.apply(encodeGpt(table, disk.size));
  flip(disk.buf, 512 + 60); // inside the disk GUID: header CRC no longer matches
  const result = await readGpt(disk);
  assert.equal(result.source, "backup");
  assert.match(result.problems.join(), /primary: .*CRC32/);
  assert.deepEqual(result.table.partitions, table.partitions);
});

test("a damaged entry array is detected by its CRC", async () => {
  const disk = memDisk(8 * MiB);
  disk.apply(encodeGpt(sampleTable(disk.size), disk.size));
  flip(disk.buf, 1024 + 56); // primary array
  const last = disk.size - 512 - 32 * 512;
  flip(disk.buf, last + 56); // backup array
  await assert.rejects(readGpt(disk), /no valid GPT.*entry array fails its CRC32/);
});

test("a disk without a GPT is rejected with a hint", async () => {
  await assert.rejects(readGpt(memDisk(MiB)), (error: Error & { hint?: string }) => {
    assert.match(error.message, /no GPT header signature/);
    assert.match(error.hint ?? "", /sgdisk -v/);
    return true;
  });
});

test("overlapping or out-of-range partitions are refused when writing", () => {
  const size = 8 * MiB;
  const table = sampleTable(size);
  const overlapping = {
    ...table,
    partitions: [...table.partitions, { ...table.partitions[0]!, number: 4, firstLba: 4000, lastLba: 4100 }],
  };
  assert.throws(() => encodeGpt(overlapping, size), /overlap/);
  const outside = { ...table, partitions: [{ ...table.partitions[0]!, lastLba: table.lastUsableLba + 1 }] };
  assert.throws(() => encodeGpt(outside, size), /outside the usable range/);
});

test("growing a disk: re-encoding moves the backup to the new end", async () => {
  const small = memDisk(8 * MiB);
  const table = sampleTable(small.size);
  small.apply(encodeGpt(table, small.size));
  const big = memDisk(16 * MiB);
  small.buf.copy(big.buf);
  await assert.doesNotReject(readGpt(big)); // primary still fine, backup missing
  const grown = { ...table, ...usableRange(big.size) };
  grown.partitions = table.partitions.map((p) =>
    p.name === "p.spare" ? { ...p, lastLba: grown.lastUsableLba } : p,
  );
  big.apply(encodeGpt(grown, big.size));
  const { table: read, problems } = await readGpt(big);
  assert.deepEqual(problems, []);
  assert.equal(findPartition(read, "p.spare")?.lastLba, big.size / 512 - 34);
});
