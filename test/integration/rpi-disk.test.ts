/**
 * The RPI disk's structure, without emulation: the suite's real pinned
 * raspi-firmware and u-boot-rpi .debs (fetched once into the build's cache,
 * EOS_CACHE_DIR-debs), a tiny root tree with the kernel's device trees, and
 * the real ESP and GPT steps of `eos build --profile RPI`; then the disk is
 * read the way the Pi's EEPROM and firmware read it, with sgdisk and mtools.
 * The DTBs and GRUB's arm64 modules are the real ones where this machine has
 * a cached arm64 root; elsewhere stand-ins (the file list is what is checked).
 * bookworm boots the Pi 4; trixie also the Pi 5.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EosError } from "../../src/core/errors.ts";
import { createHash } from "node:crypto";
import { RPI_BOOT_DEBS, rpiConfigTxt, rpiSuite } from "../../src/core/image/rpi.ts";
import { decodeGrubenv } from "../../src/core/update/grubenv.ts";
import { rootCacheDir } from "../../src/io/image/root-cache.ts";
import { pinnedDeb, rpiBootFiles } from "../../src/io/image/rpi-boot.ts";
import { systemRunner } from "../../src/io/process.ts";
import { fatFile, MTOOLS_ENV } from "../helpers/arm64-esp.ts";
import { piConfigFor } from "../helpers/pi-config.ts";
import { makeRpiDisk, rpiDebsMissing } from "../helpers/rpi-disk.ts";

const env = MTOOLS_ENV;

test("RPI disk: GPT without a hybrid MBR, FAT32 ESP with config.txt, start4.elf, u-boot.bin, DTBs, GRUB and grubenv", async (t) => {
  const missing = await rpiDebsMissing();
  if (missing) {
    t.skip(missing);
    return;
  }
  const work = await mkdtemp(join(tmpdir(), "eos-rpi-disk-"));
  t.after(() => rm(work, { recursive: true, force: true }));
  const { raw, layout, dtbDir, realDtbs, realGrub, logs, bootFilesMs } = await makeRpiDisk(work);
  t.diagnostic(`boot files in ${bootFilesMs} ms: ${logs.join("; ")}`);
  assert.match(logs.join("\n"), /raspi-firmware 1\.20220830\+ds-1 from the cache/);
  assert.match(logs.join("\n"), /u-boot-rpi 2023\.01\+dfsg-2\+deb12u3 from the cache/);
  // The Pi 5's tree is not in this kernel: the build says so instead of failing.
  assert.match(logs.join("\n"), /no .*bcm2712-rpi-5-b\.dtb \(Raspberry Pi 5\)/);

  // GPT with a protective MBR only: the Pi 4/5 EEPROM reads GPT; a hybrid MBR (Pi 3 ROM) is not made.
  const sg = spawnSync("sgdisk", ["-p", "-O", raw]).stdout.toString();
  assert.match(sg, /\s1\s+2048\s+\d+\s+64\.0 MiB\s+EF00\s+p\.UEFI/, sg);
  assert.match(sg, /\s2\s+\d+\s+\d+\s+[\d.]+ MiB\s+8305\s+p\.lxreadonly/);
  assert.match(sg, /\s3\s+\d+\s+\d+\s+[\d.]+ MiB\s+8305\s+p\.lxrootclone1/);
  assert.match(sg, /\s4\s+\d+\s+\d+\s+[\d.]+ MiB\s+8300\s+p\.spare/);
  const mbr = (await readFile(raw)).subarray(446, 512);
  assert.equal(mbr[4], 0xee, "MBR entry 1 is the protective 0xEE");
  for (const entry of [1, 2, 3]) assert.equal(mbr[entry * 16 + 4], 0, `MBR entry ${entry + 1} is empty`);

  // The ESP as the firmware sees it: read straight from the disk at p.UEFI's offset.
  const part = `${raw}@@${layout.esp.offset}`;
  const info = spawnSync("minfo", ["-i", part, "::"], { env }).stdout.toString();
  assert.match(info, /disk type="FAT32/, info);
  const root = spawnSync("mdir", ["-i", part, "-b", "::/"], { env }).stdout.toString();
  for (const f of ["config.txt", "start4.elf", "fixup4.dat", "u-boot.bin", "bcm2711-rpi-4-b.dtb", "EFI"])
    assert.match(root, new RegExp(`::/${f.replace(/\./g, "\\.")}\\b`), `${f} in ${root}`);
  assert.equal(fatFile(part, "config.txt").toString(), rpiConfigTxt(rpiSuite("bookworm", "t")));
  // The bytes a bookworm build wrote before trixie had its own pins (unit test rpi.test.ts has the same).
  assert.equal(
    createHash("sha256").update(fatFile(part, "config.txt")).digest("hex"),
    "37aeaaa6909b667e79cf63a780d5ef975b54bcbc7aa07b070fd32b3a872d9f61",
  );
  assert.match(fatFile(part, "config.txt").toString(), /^kernel=u-boot\.bin$/m);
  const unpacked = join(work, "rpi");
  assert.deepEqual(
    fatFile(part, "u-boot.bin"),
    await readFile(join(unpacked, "u-boot-rpi/usr/lib/u-boot/rpi_arm64/u-boot.bin")),
  );
  assert.deepEqual(
    fatFile(part, "start4.elf"),
    await readFile(join(unpacked, "raspi-firmware/usr/lib/raspi-firmware/start4.elf")),
  );
  assert.deepEqual(fatFile(part, "bcm2711-rpi-4-b.dtb"), await readFile(join(dtbDir, "bcm2711-rpi-4-b.dtb")));
  if (realDtbs.includes("bcm2711-rpi-4-b.dtb"))
    assert.equal(fatFile(part, "bcm2711-rpi-4-b.dtb").readUInt32BE(0), 0xd00dfeed);
  const efi = fatFile(part, "EFI/BOOT/BOOTAA64.EFI");
  if (realGrub) assert.equal(efi.readUInt16LE(efi.readUInt32LE(0x3c) + 4), 0xaa64);
  assert.match(fatFile(part, "EFI/BOOT/grub.cfg").toString(), /load_env/);
  const grubenv = decodeGrubenv(fatFile(part, "EFI/BOOT/grubenv"));
  assert.equal(grubenv.get("eos_default"), "A");
  assert.equal(grubenv.get("eos_B_part"), "gpt3");
  assert.equal(grubenv.get("eos_cmdline"), "console=tty1 console=ttyS1,115200 rootfstype=squashfs");
});

test("RPI disk on trixie: the Pi 4 and the Pi 5 find config.txt, U-Boot 2025.01 and their DTBs", async (t) => {
  const missing = await rpiDebsMissing("trixie");
  if (missing) {
    t.skip(missing);
    return;
  }
  const work = await mkdtemp(join(tmpdir(), "eos-rpi-trixie-"));
  t.after(() => rm(work, { recursive: true, force: true }));
  const { raw, layout, dtbDir, realDtbs, dtbSource, logs, bootFilesMs } = await makeRpiDisk(work, "trixie");
  t.diagnostic(`boot files in ${bootFilesMs} ms; DTBs from ${dtbSource}: ${realDtbs.join(", ") || "none"}`);
  const log = logs.join("\n");
  assert.match(log, /raspi-firmware 1\.20240424\+ds-6 (from the cache|fetched)/);
  assert.match(log, /u-boot-rpi 2025\.01-3\+deb13u1 (from the cache|fetched)/);
  assert.doesNotMatch(log, /Raspberry Pi 5/, "the Pi 5 is not reported unbootable");

  const part = `${raw}@@${layout.esp.offset}`;
  const onEsp = new Set(
    spawnSync("mdir", ["-i", part, "-b", "::/"], { env })
      .stdout.toString()
      .split("\n")
      .map((l) => l.trim().replace(/^::\//, "")),
  );
  const config = fatFile(part, "config.txt").toString();
  assert.equal(config, rpiConfigTxt(rpiSuite("trixie", "t")));
  // Each board's firmware reads config.txt with its own filter and must find what it names.
  const boards = [
    { board: "pi4", dtb: "bcm2711-rpi-4-b.dtb", gpu: ["start4.elf", "fixup4.dat"], uart: "1" },
    { board: "pi5", dtb: "bcm2712-rpi-5-b.dtb", gpu: [], uart: "0" },
  ] as const;
  for (const b of boards) {
    const settings = piConfigFor(config, b.board);
    assert.equal(settings.get("kernel"), "u-boot.bin", b.board);
    assert.equal(settings.get("enable_uart"), b.uart, b.board);
    for (const f of ["u-boot.bin", b.dtb, ...b.gpu])
      assert.ok(onEsp.has(f), `${b.board}: ${f} in ${[...onEsp]}`);
  }
  const unpacked = join(work, "rpi");
  const uboot = fatFile(part, "u-boot.bin");
  assert.deepEqual(uboot, await readFile(join(unpacked, "u-boot-rpi/usr/lib/u-boot/rpi_arm64/u-boot.bin")));
  // 2025.01's rpi_arm64 has the BCM2712 in its board code and the Pi 5's SD controller driver.
  for (const s of ["brcm,bcm2712", "brcm,bcm2712-sdhci"]) assert.ok(uboot.includes(s), s);
  assert.deepEqual(
    fatFile(part, "start4.elf"),
    await readFile(join(unpacked, "raspi-firmware/usr/lib/raspi-firmware/start4.elf")),
  );
  const trees = [
    { dtb: "bcm2711-rpi-4-b.dtb", model: "raspberrypi,4-model-b", sd: "brcm,bcm2711-emmc2" },
    { dtb: "bcm2712-rpi-5-b.dtb", model: "raspberrypi,5-model-b", sd: "brcm,bcm2712-sdhci" },
  ];
  for (const { dtb, model, sd } of trees) {
    const onFat = fatFile(part, dtb);
    assert.deepEqual(onFat, await readFile(join(dtbDir, dtb)), dtb);
    if (!realDtbs.includes(dtb)) continue;
    // trixie's kernel: a flattened tree for that board, with the SD controller U-Boot and the kernel boot from.
    assert.equal(onFat.readUInt32BE(0), 0xd00dfeed, dtb);
    for (const s of [model, sd]) assert.ok(onFat.includes(`${s}\0`), `${dtb} has ${s}`);
  }
  const grubenv = decodeGrubenv(fatFile(part, "EFI/BOOT/grubenv"));
  assert.equal(
    grubenv.get("eos_cmdline"),
    "console=tty1 console=ttyAMA10,115200 console=ttyS1,115200 rootfstype=squashfs",
  );

  // A trixie root whose kernel lacks the Pi 5's tree is a build error, not a quiet omission.
  await rm(join(dtbDir, "bcm2712-rpi-5-b.dtb"));
  await assert.rejects(
    rpiBootFiles({
      proc: systemRunner(),
      rpi: rpiSuite("trixie", "t"),
      mirror: "http://deb.debian.org/debian",
      cacheDir: `${rootCacheDir(process.env)}-debs`,
      work: join(work, "again"),
      tree: join(work, "tree"),
      kernel: "6.12.0-test-arm64",
      log: () => undefined,
    }),
    (e: unknown) =>
      e instanceof EosError &&
      e.code === "BUILD" &&
      /Raspberry Pi 5 cannot boot without bcm2712-rpi-5-b\.dtb/.test(e.message),
  );
});

test("pinned .debs: a changed cache file is fetched again, wrong bytes and an unreachable mirror are typed errors", async (t) => {
  const cacheDir = await mkdtemp(join(tmpdir(), "eos-rpi-debs-"));
  t.after(() => rm(cacheDir, { recursive: true, force: true }));
  const deb = { ...RPI_BOOT_DEBS.bookworm.uboot };
  const bytes = Buffer.from("a .deb");
  const { createHash } = await import("node:crypto");
  deb.sha256 = createHash("sha256").update(bytes).digest("hex") as typeof deb.sha256;
  const asked: string[] = [];
  const fetch = async (url: string) => {
    asked.push(url);
    return bytes;
  };
  const first = await pinnedDeb(deb, { mirror: "http://m/debian/", cacheDir, fetch });
  assert.deepEqual(asked, [`http://m/debian/${deb.filename}`]);
  assert.equal(first.cached, false);
  assert.equal((await pinnedDeb(deb, { mirror: "http://m/debian", cacheDir, fetch })).cached, true);
  await writeFile(first.path, "changed on disk");
  assert.equal((await pinnedDeb(deb, { mirror: "http://m/debian", cacheDir, fetch })).cached, false);
  assert.equal(asked.length, 2);

  const other = { ...deb, sha256: "b".repeat(64) as typeof deb.sha256 };
  await assert.rejects(
    pinnedDeb(other, { mirror: "http://m/debian", cacheDir: join(cacheDir, "x"), fetch }),
    (e: unknown) => e instanceof EosError && e.code === "HASH_MISMATCH",
  );
  assert.equal(existsSync(join(cacheDir, "x")), false, "nothing cached from a mismatch");
  await assert.rejects(
    pinnedDeb(other, {
      mirror: "http://m/debian",
      cacheDir: join(cacheDir, "y"),
      fetch: async () => {
        throw new TypeError("fetch failed");
      },
    }),
    (e: unknown) =>
      e instanceof EosError &&
      e.code === "NETWORK" &&
      /u-boot-rpi 2023\.01\+dfsg-2\+deb12u3/.test(e.message) &&
      /cached in/.test(e.hint ?? ""),
  );
  await assert.rejects(
    pinnedDeb(other, {
      mirror: "http://m/debian",
      cacheDir: join(cacheDir, "z"),
      fetch: async (url) => {
        throw new EosError("HTTP", `${url}: HTTP 404`);
      },
    }),
    (e: unknown) =>
      e instanceof EosError && e.code === "NOT_FOUND" && /src\/core\/image\/rpi\.ts/.test(e.hint ?? ""),
  );
});
