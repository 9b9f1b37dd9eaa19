import { test } from "node:test";
import assert from "node:assert/strict";
import { firmwareSwitchOrder } from "../../src/core/update/firmware-order.ts";

test("--firmware switch order: new files first, then replaced ones, the GPU firmware pair back to back, config.txt last", () => {
  const present = new Set([
    "config.txt",
    "start4.elf",
    "fixup4.dat",
    "u-boot.bin",
    "bcm2711-rpi-4-b.dtb",
    "bcm2837-rpi-3-b.dtb",
  ]);
  // As readdir might list them: config.txt first, the pair apart.
  const incoming = [
    "config.txt",
    "fixup4.dat",
    "bcm2711-rpi-4-b.dtb",
    "overlays/disable-bt.dtbo",
    "start4.elf",
    "u-boot.bin",
    "bcm2711-rpi-400.dtb",
  ];
  assert.deepEqual(firmwareSwitchOrder(incoming, present), [
    "bcm2711-rpi-400.dtb",
    "overlays/disable-bt.dtbo",
    "bcm2711-rpi-4-b.dtb",
    "u-boot.bin",
    "fixup4.dat",
    "start4.elf",
    "config.txt",
  ]);
  // Two pairs: each one's files next to each other; a Config.TXT on FAT is config.txt.
  assert.deepEqual(
    firmwareSwitchOrder(["start_cd.elf", "Config.TXT", "start.elf", "fixup_cd.dat", "fixup.dat"], new Set()),
    ["fixup.dat", "start.elf", "fixup_cd.dat", "start_cd.elf", "Config.TXT"],
  );
  assert.deepEqual(firmwareSwitchOrder([], present), []);
});
