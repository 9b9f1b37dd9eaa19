import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readGpt, findPartition, partitionRange, PartitionType } from "../../src/core/gpt.ts";
import { encodeGpt, usableRange } from "../../src/core/gpt-write.ts";
import { openBlockSource } from "../../src/io/files.ts";
import { mustRun, run } from "../helpers/run.ts";

let dir: string;
before(async () => (dir = await mkdtemp(join(tmpdir(), "eos-gpt-"))));
after(async () => rm(dir, { recursive: true, force: true }));

async function emptyDisk(name: string, mib: number): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, "");
  await truncate(path, mib * 1024 * 1024);
  return path;
}

/** sgdisk's own view of partition N: first/last sector, unique GUID and name. */
async function sgdiskInfo(path: string, n: number) {
  const out = (await mustRun("sgdisk", ["-i", String(n), path])).stdout.toString();
  const field = (re: RegExp) => (re.exec(out)?.[1] ?? "").trim();
  return {
    first: Number(field(/First sector: (\d+)/)),
    last: Number(field(/Last sector: (\d+)/)),
    unique: field(/Partition unique GUID: (\S+)/),
    type: field(/Partition GUID code: (\S+)/),
    name: field(/Partition name: '(.*)'/),
  };
}

test("reads tables that sgdisk wrote: labels, sectors, GUIDs agree with sgdisk -i", async () => {
  const path = await emptyDisk("sgdisk.raw", 64);
  await mustRun("sgdisk", [
    "-n",
    "1:2048:+8M",
    "-t",
    "1:ef00",
    "-c",
    "1:p.UEFI",
    "-n",
    "2:0:+20M",
    "-c",
    "2:p.lxreadonly",
    "-n",
    "3:0:+20M",
    "-c",
    "3:p.lxrootclone1",
    "-n",
    "4:0:0",
    "-c",
    "4:p.spare",
    path,
  ]);
  const source = await openBlockSource(path);
  try {
    const { table, problems } = await readGpt(source);
    assert.deepEqual(problems, []);
    assert.equal(table.partitions.length, 4);
    for (const p of table.partitions) {
      const info = await sgdiskInfo(path, p.number);
      assert.equal(p.firstLba, info.first);
      assert.equal(p.lastLba, info.last);
      assert.equal(p.uniqueGuid, info.unique);
      assert.equal(p.typeGuid, info.type);
      assert.equal(p.name, info.name);
    }
    const root = findPartition(table, "p.lxreadonly");
    assert.ok(root);
    assert.equal(partitionRange(table, root).length, 20 * 1024 * 1024);
  } finally {
    await source.close();
  }
});

test("what the codec writes, sgdisk -v accepts, and sgdisk reads the same partitions", async () => {
  const size = 32 * 1024 * 1024;
  const path = await emptyDisk("ours.raw", 32);
  const { firstUsableLba, lastUsableLba } = usableRange(size);
  const table = {
    sectorSize: 512,
    diskGuid: "0B0B0B0B-1111-4222-8333-444444444444",
    firstUsableLba,
    lastUsableLba,
    entryCount: 128,
    entrySize: 128,
    partitions: [
      {
        number: 1,
        typeGuid: PartitionType.efiSystem,
        uniqueGuid: "C0C0C0C0-0000-4000-8000-000000000001",
        firstLba: 2048,
        lastLba: 18431,
        attributes: 0n,
        name: "p.UEFI",
      },
      {
        number: 2,
        typeGuid: PartitionType.linuxData,
        uniqueGuid: "C0C0C0C0-0000-4000-8000-000000000002",
        firstLba: 18432,
        lastLba: 40959,
        attributes: 0n,
        name: "p.lxreadonly",
      },
      {
        number: 3,
        typeGuid: PartitionType.linuxData,
        uniqueGuid: "C0C0C0C0-0000-4000-8000-000000000003",
        firstLba: 40960,
        lastLba: lastUsableLba,
        attributes: 0n,
        name: "p.spare",
      },
    ],
  };
  const source = await openBlockSource(path, "r+");
  try {
    for (const w of encodeGpt(table, size)) await source.handle.write(w.data, 0, w.data.length, w.offset);
  } finally {
    await source.close();
  }
  const verify = await run("sgdisk", ["-v", path]);
  assert.equal(verify.code, 0, verify.stderr);
  assert.match(verify.stdout.toString(), /No problems found/);
  for (const p of table.partitions) {
    const info = await sgdiskInfo(path, p.number);
    assert.deepEqual(
      [info.first, info.last, info.unique, info.name],
      [p.firstLba, p.lastLba, p.uniqueGuid, p.name],
    );
  }
});
