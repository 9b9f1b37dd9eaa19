import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { EosError } from "../../src/core/errors.ts";
import { PartitionType } from "../../src/core/gpt.ts";
import { hasSlotB, parseImageDescription, PROFILES } from "../../src/core/image/description.ts";
import { profileDescription } from "../../src/core/image/ec2.ts";
import { planLayout } from "../../src/core/image/layout.ts";
import { baseRootInputs, baseRootKey } from "../../src/core/image/root-cache.ts";
import { rootFiles, serialConsole } from "../../src/core/image/root-files.ts";
import {
  debFileName,
  RPI_BOOT_DEBS,
  RPI_CONSOLE,
  rpiConfigTxt,
  rpiEspFiles,
  UBOOT_FILE,
} from "../../src/core/image/rpi.ts";

const shipped = parseImageDescription(
  readFileSync(new URL("../../images/aarch64.yaml", import.meta.url), "utf8"),
  "images/aarch64.yaml",
);

test("RPI is a profile with two root slots, and its disk is the AB disk", () => {
  assert.ok((PROFILES as readonly string[]).includes("RPI"));
  assert.equal(hasSlotB("RPI"), true);
  const rpi = planLayout(profileDescription(shipped, "RPI", "f").desc, "RPI", "aarch64");
  const ab = planLayout(shipped, "AB", "aarch64");
  // The same partitions at the same places: os-update and the server need nothing RPI-specific.
  assert.deepEqual(rpi.table, ab.table);
  assert.equal(rpi.table.partitions[0]?.typeGuid, PartitionType.efiSystem);
  assert.equal(rpi.table.partitions[0]?.name, "p.UEFI");
});

test("the RPI profile keeps the root's packages, so the AB root cache entry serves it", () => {
  const { desc } = profileDescription(shipped, "RPI", "f");
  const archive = { "dists/bookworm/InRelease": "a".repeat(64) };
  assert.equal(
    baseRootKey(baseRootInputs(desc, "aarch64", archive, 1)),
    baseRootKey(baseRootInputs(shipped, "aarch64", archive, 1)),
  );
  assert.deepEqual(desc.distribution.components, ["main"]);
});

test("the RPI console is the GPIO header UART, last, so systemd and the autologin getty use it", () => {
  const { desc, notes } = profileDescription(shipped, "RPI", "images/aarch64.yaml");
  assert.deepEqual(
    desc.kernel.cmdline.filter((w) => w.startsWith("console=")),
    ["console=tty1", RPI_CONSOLE],
  );
  assert.equal(serialConsole(desc.kernel.cmdline), "ttyS1");
  assert.match(notes.join("\n"), /console=ttyAMA0 becomes/);
  const files = rootFiles(desc, {
    keyNames: [],
    commands: [],
    nodePath: undefined,
    updateCommitUnit: "[Unit]\n",
    architecture: "aarch64",
  });
  assert.ok(files.some((f) => f.path.includes("serial-getty@ttyS1.service.d")));
});

test("an ESP below 64 MiB is refused for RPI, naming the file and key", () => {
  const small = parseImageDescription("name: EOS\nversion: '1'\npartitions: {esp: 32M}\n", "small.yaml");
  assert.throws(
    () => profileDescription(small, "RPI", "small.yaml"),
    (e: unknown) =>
      e instanceof EosError &&
      e.code === "CONFIG" &&
      /small\.yaml: partitions\.esp is 32 MiB/.test(e.message),
  );
  // The other profiles do not care.
  assert.doesNotThrow(() => profileDescription(small, "AB", "small.yaml"));
});

test("the ESP file list: the Pi 4's firmware, U-Boot, and the device trees, each named once", () => {
  const files = rpiEspFiles();
  const dests = files.map((f) => f.dest);
  assert.equal(new Set(dests).size, dests.length);
  const byDest = new Map(files.map((f) => [f.dest, f]));
  for (const name of ["start4.elf", "fixup4.dat"])
    assert.deepEqual(byDest.get(name)?.source, {
      from: "raspi-firmware",
      path: `usr/lib/raspi-firmware/${name}`,
    });
  assert.deepEqual(byDest.get(UBOOT_FILE)?.source, {
    from: "u-boot-rpi",
    path: "usr/lib/u-boot/rpi_arm64/u-boot.bin",
  });
  const required = files.filter((f) => f.required).map((f) => f.dest);
  assert.deepEqual(required.sort(), ["bcm2711-rpi-4-b.dtb", "fixup4.dat", "start4.elf", "u-boot.bin"]);
  // The Pi 5's tree is asked for (a newer kernel has it) but is not required of bookworm's 6.1.
  assert.equal(byDest.get("bcm2712-rpi-5-b.dtb")?.required, false);
  assert.equal(byDest.get("bcm2837-rpi-3-b.dtb")?.source.from, "kernel-dtbs");
});

test("config.txt: 64-bit, starts the U-Boot the ESP carries, UART on, upstream DT names", () => {
  const lines = rpiConfigTxt().split("\n");
  for (const want of ["arm_64bit=1", `kernel=${UBOOT_FILE}`, "enable_uart=1", "upstream_kernel=1"])
    assert.ok(lines.includes(want), want);
  const kernel = lines.find((l) => l.startsWith("kernel="))?.slice(7);
  assert.ok(rpiEspFiles().some((f) => f.dest === kernel && f.required));
  // The firmware must not boot a kernel itself: no initramfs, cmdline or device_tree lines.
  assert.ok(!lines.some((l) => /^(initramfs|cmdline|device_tree|os_prefix)\b/.test(l)));
});

test("the pinned .debs are pool files of bookworm with a sha256, cached under their pool name", () => {
  assert.equal(debFileName(RPI_BOOT_DEBS.uboot), "u-boot-rpi_2023.01+dfsg-2+deb12u3_arm64.deb");
  assert.equal(debFileName(RPI_BOOT_DEBS.firmware), "raspi-firmware_1.20220830+ds-1_all.deb");
  assert.match(RPI_BOOT_DEBS.firmware.filename, /^pool\/non-free-firmware\//);
  for (const bad of ["pool/x/../../etc/passwd", "pool/main/u/u-boot/u-boot.bin", "pool/a b_1_arm64.deb"])
    assert.throws(() => debFileName({ ...RPI_BOOT_DEBS.uboot, filename: bad }), EosError, bad);
  assert.throws(() => debFileName({ ...RPI_BOOT_DEBS.uboot, sha256: "x" }), EosError);
});
