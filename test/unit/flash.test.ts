import { test } from "node:test";
import assert from "node:assert/strict";
import { flashRefusal, parseMountInfo, parseSwaps, type FlashTarget } from "../../src/core/image/flash.ts";

const card: FlashTarget = {
  path: "/dev/sdb",
  name: "sdb",
  isBlockDevice: true,
  isPartition: false,
  sizeBytes: 32e9,
  removable: true,
  usb: false,
  readOnly: false,
  model: "Generic SD/MMC",
  inUse: [],
  holdsRunningSystem: false,
};

test("a removable card big enough is written; a USB disk counts as removable; a fixed one needs --force", () => {
  assert.equal(flashRefusal(card, 4e9, false), undefined);
  assert.equal(flashRefusal({ ...card, removable: false, usb: true }, 4e9, false), undefined);
  assert.match(
    flashRefusal({ ...card, removable: false }, 4e9, false)?.message ?? "",
    /not a removable disk/,
  );
  assert.equal(flashRefusal({ ...card, removable: false }, 4e9, true), undefined);
});

test("--force never lifts: running system, in use, read-only, too small, a partition", () => {
  const cases: Array<[Partial<FlashTarget>, RegExp]> = [
    [{ holdsRunningSystem: true, inUse: ["/"] }, /holds the running system \(\/\)/],
    [{ inUse: ["/media/card", "swap /dev/sdb2"] }, /in use: \/media\/card, swap \/dev\/sdb2/],
    [{ readOnly: true }, /read-only/],
    [{ sizeBytes: 1e9 }, /smaller than the image/],
    [{ isPartition: true }, /is a partition/],
    [{ isBlockDevice: false }, /not a block device/],
  ];
  for (const [facts, message] of cases)
    assert.match(flashRefusal({ ...card, ...facts }, 4e9, true)?.message ?? "(written)", message);
  // An image whose size the format does not tell (gzip) is not refused up front.
  assert.equal(flashRefusal({ ...card, sizeBytes: 1e9 }, undefined, false), undefined);
});

test("mountinfo: device numbers and mount points, with the kernel's octal escapes undone", () => {
  const text = [
    "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw",
    "40 22 8:17 / /media/my\\040card rw - vfat /dev/sdb1 rw",
    "garbage",
  ].join("\n");
  assert.deepEqual(parseMountInfo(text), [
    { device: "254:1", mountPoint: "/" },
    { device: "8:17", mountPoint: "/media/my card" },
  ]);
  const swaps =
    "Filename\tType\tSize\tUsed\tPriority\n/dev/sdb2 partition 1048572 0 -2\n/swapfile file 1 0 -3\n";
  assert.deepEqual(parseSwaps(swaps), ["/dev/sdb2"]);
});
