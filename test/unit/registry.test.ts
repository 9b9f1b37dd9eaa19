import { test } from "node:test";
import assert from "node:assert/strict";
import { PartitionType, type GptTable } from "../../src/core/gpt.ts";
import { usableRange } from "../../src/core/gpt-write.ts";
import {
  REGISTRY_MIN_BYTES,
  checkMapperName,
  checkRegistrySize,
  decodeToken,
  describeSignature,
  setupCutShort,
  encodeToken,
  parseBlkidExport,
  parsePcrs,
  planGrow,
} from "../../src/core/registry/registry.ts";

const MiB = 1024 * 1024;

function table(diskBytes: number, lastName = "p.spare"): GptTable {
  const { firstUsableLba, lastUsableLba } = usableRange(diskBytes);
  const part = (number: number, first: number, last: number, name: string) => ({
    number,
    typeGuid: PartitionType.linuxData,
    uniqueGuid: `A1A1A1A1-0000-4000-8000-00000000000${number}`,
    firstLba: first,
    lastLba: last,
    attributes: 0n,
    name,
  });
  return {
    sectorSize: 512,
    diskGuid: "11111111-2222-3333-4444-555555555555",
    firstUsableLba,
    lastUsableLba,
    entryCount: 128,
    entrySize: 128,
    // Listed out of order on purpose: the last one on disk counts, not the last entry.
    partitions: [part(2, 4096, 8191, lastName), part(1, 2048, 4095, "p.UEFI")],
  };
}

test("tokens: the TPM blob and PCRs round-trip; foreign tokens are ignored; damaged ones named", () => {
  const json = encodeToken({ provider: "tpm2", pub: "AAEC", priv: "AwQF", pcrs: [7] }, 0);
  assert.deepEqual(JSON.parse(json).keyslots, ["0"]);
  assert.deepEqual(decodeToken(json, "dev"), { provider: "tpm2", pub: "AAEC", priv: "AwQF", pcrs: [7] });
  assert.deepEqual(decodeToken(encodeToken({ provider: "keyfile" }, 1), "dev"), { provider: "keyfile" });
  assert.equal(decodeToken('{"type":"systemd-tpm2","keyslots":["1"]}', "dev"), undefined);
  assert.throws(
    () => decodeToken('{"type":"eos-tpm2","keyslots":["0"]}', "/dev/vda4 token 0"),
    /\/dev\/vda4 token 0.*sealed key/,
  );
  assert.throws(() => decodeToken("{", "dev"), /not JSON/);
  assert.throws(
    () => decodeToken(encodeToken({ provider: "tpm2", pub: "AA==", priv: "AA==", pcrs: [99] }, 0), "dev"),
    /pcrs/,
  );
});

test("--pcrs parsing", () => {
  assert.deepEqual(parsePcrs(""), []);
  assert.deepEqual(parsePcrs("7,0,7"), [0, 7]);
  assert.throws(() => parsePcrs("7,x"), /--pcrs 7,x/);
  assert.throws(() => parsePcrs("24"), /0-23/);
});

test("what a probe found, in words", () => {
  const xfs = parseBlkidExport("DEVNAME=/dev/vdb\nUUID=abc\nLABEL=data\nTYPE=xfs\nUSAGE=filesystem\n");
  assert.equal(describeSignature(xfs), "a xfs file system labelled data (UUID abc)");
  assert.equal(
    describeSignature(parseBlkidExport("VERSION=2\nUUID=u\nTYPE=crypto_LUKS\nUSAGE=crypto\n")),
    "a LUKS2 header (UUID u)",
  );
  assert.equal(describeSignature(parseBlkidExport("PTUUID=x\nPTTYPE=gpt\n")), "a gpt partition table");
  assert.equal(describeSignature(parseBlkidExport("")), undefined);
});

test("size: at least the LUKS2 header and the smallest XFS", () => {
  assert.throws(
    () => checkRegistrySize("/dev/vda4", 64 * MiB),
    /\/dev\/vda4 is 64 MiB: the registry needs at least 316 MiB/,
  );
  checkRegistrySize("/dev/vda4", REGISTRY_MIN_BYTES);
});

test("grow: the last partition (p.spare) to the end of a larger disk, 1 MiB aligned", () => {
  const small = 8 * MiB;
  const t = table(small);
  const big = 100 * MiB;
  const plan = planGrow(t, big, false);
  assert.ok(plan);
  assert.equal(plan.partitionNumber, 2);
  assert.equal(plan.headerOnly, false);
  const spare = plan.table.partitions.find((p) => p.name === "p.spare");
  assert.equal(spare?.firstLba, 4096);
  assert.equal(((spare?.lastLba ?? 0) + 1) % 2048, 0);
  assert.ok((spare?.lastLba ?? 0) <= usableRange(big).lastUsableLba);
  assert.equal(plan.table.lastUsableLba, usableRange(big).lastUsableLba);
  assert.equal(plan.newBytes, ((spare?.lastLba ?? 0) - 4096 + 1) * 512);
  // Already grown: nothing to do.
  assert.equal(planGrow(plan.table, big, true), undefined);
  // Only another partition at the end: refused, nothing planned.
  assert.throws(
    () => planGrow(table(small, "p.lxreadonly"), big, false),
    /last partition is p\.lxreadonly, not p\.spare/,
  );
});

test("mapper names stay plain", () => {
  assert.equal(checkMapperName("luksInstances"), "luksInstances");
  assert.throws(() => checkMapperName("../x"), /mapper name/);
});

test("setupCutShort: only a LUKS header still labelled eos-setup-incomplete", () => {
  const probe = (text: string) => setupCutShort(parseBlkidExport(text));
  assert.equal(probe("TYPE=crypto_LUKS\nVERSION=2\nLABEL=eos-setup-incomplete\n"), true);
  assert.equal(probe("TYPE=crypto_LUKS\nVERSION=2\n"), false, "a finished registry has no label");
  assert.equal(probe("TYPE=crypto_LUKS\nLABEL=something-else\n"), false);
  assert.equal(
    probe("TYPE=xfs\nLABEL=eos-setup-incomplete\n"),
    false,
    "only a LUKS header, never a file system",
  );
  assert.equal(probe(""), false);
});
