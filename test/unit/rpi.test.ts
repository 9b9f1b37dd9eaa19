import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
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
  RPI5_CONSOLE,
  RPI_BOOT_DEBS,
  RPI_CONSOLE,
  rpiConfigTxt,
  rpiEspFiles,
  rpiSuite,
  UBOOT_FILE,
} from "../../src/core/image/rpi.ts";
import { piConfigFor } from "../helpers/pi-config.ts";

const bookworm = rpiSuite("bookworm", "f");
const trixie = rpiSuite("trixie", "f");

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
  // bookworm builds no Pi 5, so no Pi 5 console (trixie's, the shipped suite: below).
  const onBookworm = { ...shipped, distribution: { ...shipped.distribution, suite: "bookworm" as const } };
  const { desc, notes } = profileDescription(onBookworm, "RPI", "images/aarch64.yaml");
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
  const files = rpiEspFiles(bookworm);
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
  const lines = rpiConfigTxt(bookworm).split("\n");
  for (const want of ["arm_64bit=1", `kernel=${UBOOT_FILE}`, "enable_uart=1", "upstream_kernel=1"])
    assert.ok(lines.includes(want), want);
  const kernel = lines.find((l) => l.startsWith("kernel="))?.slice(7);
  assert.ok(rpiEspFiles(bookworm).some((f) => f.dest === kernel && f.required));
  // The firmware must not boot a kernel itself: no initramfs, cmdline or device_tree lines.
  assert.ok(!lines.some((l) => /^(initramfs|cmdline|device_tree|os_prefix)\b/.test(l)));
});

test("the pinned .debs are pool files with a sha256, cached under their pool name", () => {
  assert.equal(debFileName(bookworm.debs.uboot), "u-boot-rpi_2023.01+dfsg-2+deb12u3_arm64.deb");
  assert.equal(debFileName(bookworm.debs.firmware), "raspi-firmware_1.20220830+ds-1_all.deb");
  for (const { debs } of [bookworm, trixie]) {
    assert.match(debs.firmware.filename, /^pool\/non-free-firmware\//);
    for (const deb of [debs.firmware, debs.uboot]) assert.ok(debFileName(deb).includes(`_${deb.version}_`));
  }
  for (const bad of ["pool/x/../../etc/passwd", "pool/main/u/u-boot/u-boot.bin", "pool/a b_1_arm64.deb"])
    assert.throws(() => debFileName({ ...bookworm.debs.uboot, filename: bad }), EosError, bad);
  assert.throws(() => debFileName({ ...bookworm.debs.uboot, sha256: "x" }), EosError);
});

test("pins follow distribution.suite: bookworm's as they were, trixie's U-Boot knows the Pi 5", () => {
  assert.equal(bookworm.debs, RPI_BOOT_DEBS.bookworm);
  assert.equal(
    bookworm.debs.firmware.sha256,
    "0094ced47a7fbb6a220ff83e7b43aa637a5d8f6802461e2e4e474597fb796f62",
  );
  assert.equal(
    bookworm.debs.uboot.sha256,
    "3722f286cfafca03f4cac7adade04fccf66158ad8467501b9deabd154162b5e8",
  );
  assert.equal(bookworm.pi5, false);
  assert.equal(trixie.debs, RPI_BOOT_DEBS.trixie);
  assert.equal(trixie.debs.uboot.version, "2025.01-3+deb13u1");
  assert.equal(trixie.debs.firmware.version, "1.20240424+ds-6");
  assert.equal(trixie.pi5, true);
});

test("a suite without pins is a CONFIG error naming distribution.suite and the suites that have pins", () => {
  assert.throws(
    () => rpiSuite("forky", "images/x.yaml"),
    (e: unknown) =>
      e instanceof EosError &&
      e.code === "CONFIG" &&
      /images\/x\.yaml: distribution\.suite is forky/.test(e.message) &&
      /bookworm, trixie/.test(e.message),
  );
});

test("bookworm's config.txt and ESP list are today's bytes: a bookworm build does not change", () => {
  // sha256 of rpiConfigTxt() before the suites were split (commit 4259d1b).
  assert.equal(
    createHash("sha256").update(rpiConfigTxt(bookworm)).digest("hex"),
    "37aeaaa6909b667e79cf63a780d5ef975b54bcbc7aa07b070fd32b3a872d9f61",
  );
  assert.ok(!rpiConfigTxt(bookworm).includes("[pi5]"));
  // rpiEspFiles() before the split, as (dest, source, required).
  assert.deepEqual(
    rpiEspFiles(bookworm).map((f) => [f.dest, `${f.source.from}:${f.source.path}`, f.required]),
    [
      ["start4.elf", "raspi-firmware:usr/lib/raspi-firmware/start4.elf", true],
      ["fixup4.dat", "raspi-firmware:usr/lib/raspi-firmware/fixup4.dat", true],
      ["u-boot.bin", "u-boot-rpi:usr/lib/u-boot/rpi_arm64/u-boot.bin", true],
      ["bcm2711-rpi-4-b.dtb", "kernel-dtbs:broadcom/bcm2711-rpi-4-b.dtb", true],
      ["bcm2711-rpi-400.dtb", "kernel-dtbs:broadcom/bcm2711-rpi-400.dtb", false],
      ["bcm2711-rpi-cm4-io.dtb", "kernel-dtbs:broadcom/bcm2711-rpi-cm4-io.dtb", false],
      ["bcm2712-rpi-5-b.dtb", "kernel-dtbs:broadcom/bcm2712-rpi-5-b.dtb", false],
      ["bcm2837-rpi-3-b.dtb", "kernel-dtbs:broadcom/bcm2837-rpi-3-b.dtb", false],
      ["bcm2837-rpi-3-b-plus.dtb", "kernel-dtbs:broadcom/bcm2837-rpi-3-b-plus.dtb", false],
    ],
  );
});

test("trixie: the Pi 5's DTB is required, and only that changes in the ESP list", () => {
  const byDest = new Map(rpiEspFiles(trixie).map((f) => [f.dest, f]));
  assert.equal(byDest.get("bcm2712-rpi-5-b.dtb")?.required, true);
  assert.deepEqual(
    rpiEspFiles(trixie).map((f) => (f.dest === "bcm2712-rpi-5-b.dtb" ? { ...f, required: false } : f)),
    rpiEspFiles(bookworm),
  );
});

test("trixie config.txt: the Pi 4 reads bookworm's settings, the Pi 5 starts U-Boot with its UART input off", () => {
  const text = rpiConfigTxt(trixie);
  assert.deepEqual(piConfigFor(text, "pi4"), piConfigFor(rpiConfigTxt(bookworm), "pi4"));
  const pi5 = piConfigFor(text, "pi5");
  assert.equal(pi5.get("kernel"), UBOOT_FILE);
  assert.equal(pi5.get("enable_uart"), "0");
  assert.equal(pi5.get("upstream_kernel"), "1");
  // Whatever is appended after it applies to every board again.
  assert.match(text, /\[pi5\]\nenable_uart=0\n\[all\]\n$/);
});

test("trixie's RPI cmdline: the Pi 5's debug UART before the Pi 4's, which stays /dev/console", () => {
  assert.equal(shipped.distribution.suite, "trixie");
  const { desc: rpi, notes } = profileDescription(shipped, "RPI", "f");
  assert.deepEqual(
    rpi.kernel.cmdline.filter((w) => w.startsWith("console=")),
    ["console=tty1", RPI5_CONSOLE, RPI_CONSOLE],
  );
  assert.equal(serialConsole(rpi.kernel.cmdline), "ttyS1");
  assert.match(notes.join("\n"), /becomes console=tty1 console=ttyAMA10,115200 console=ttyS1,115200/);
});
