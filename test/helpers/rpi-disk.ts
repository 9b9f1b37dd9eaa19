/**
 * An RPI disk (`eos build --profile RPI`'s ESP and GPT steps) without
 * emulation, for the tests that read one (rpi-disk) or update one
 * (rpi-firmware): the suite's real pinned raspi-firmware and u-boot-rpi .debs
 * (fetched once into the build's cache, EOS_CACHE_DIR-debs), a tiny root tree
 * with the kernel's device trees (real ones where this machine has a cached
 * arm64 root whose kernel has them, stand-ins elsewhere: no cached root has
 * trixie's bcm2712-rpi-5-b.dtb unless a trixie arm64 root was built here).
 */
import { existsSync } from "node:fs";
import { copyFile, mkdir, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { EosError } from "../../src/core/errors.ts";
import { parseImageDescription } from "../../src/core/image/description.ts";
import { profileDescription } from "../../src/core/image/ec2.ts";
import { planLayout, type DiskLayout } from "../../src/core/image/layout.ts";
import { rpiSuite } from "../../src/core/image/rpi.ts";
import { assembleDisk, makeRootImage } from "../../src/io/image/disk.ts";
import { rootCacheDir } from "../../src/io/image/root-cache.ts";
import { pinnedDeb, rpiBootFiles } from "../../src/io/image/rpi-boot.ts";
import { systemRunner } from "../../src/io/process.ts";
import { arm64Grub, cachedArm64Root, makeArm64Esp } from "./arm64-esp.ts";

const MIRROR = "http://deb.debian.org/debian";
export type RpiTestSuite = "bookworm" | "trixie";
const KERNEL: Record<RpiTestSuite, string> = { bookworm: "6.1.0-test-arm64", trixie: "6.12.0-test-arm64" };
/** The kernel's DTBs the test root carries: bookworm's 6.1 has no Pi 5 tree. */
const DTBS: Record<RpiTestSuite, string[]> = {
  bookworm: ["bcm2711-rpi-4-b.dtb", "bcm2711-rpi-400.dtb", "bcm2837-rpi-3-b.dtb"],
  trixie: ["bcm2711-rpi-4-b.dtb", "bcm2711-rpi-400.dtb", "bcm2712-rpi-5-b.dtb", "bcm2837-rpi-3-b.dtb"],
};

export interface RpiDisk {
  raw: string;
  layout: DiskLayout;
  /** The kernel's broadcom/ directory the DTBs came from. */
  dtbDir: string;
  /** The DTBs copied from a cached arm64 root's kernel; the others are stand-ins. */
  realDtbs: string[];
  /** GRUB's arm64 modules were real. */
  realGrub: boolean;
  /** What rpiBootFiles logged. */
  logs: string[];
  bootFilesMs: number;
}

/** Why the suite's .debs cannot be had (not cached, mirror unreachable), or undefined when they are in the cache. */
export async function rpiDebsMissing(suite: RpiTestSuite = "bookworm"): Promise<string | undefined> {
  const cacheDir = `${rootCacheDir(process.env)}-debs`;
  const { debs } = rpiSuite(suite, "test");
  for (const deb of [debs.firmware, debs.uboot]) {
    try {
      await pinnedDeb(deb, { mirror: MIRROR, cacheDir });
    } catch (error) {
      if (error instanceof EosError && error.code === "NETWORK")
        return `${deb.package} is not cached in ${cacheDir} and Debian's mirror is unreachable: ${error.message}`;
      throw error;
    }
  }
  return undefined;
}

/** `work`/EOS.aarch64-RPI.raw: slot A holds a stand-in root, the ESP the RPI boot chain and GRUB. */
export async function makeRpiDisk(work: string, suite: RpiTestSuite = "bookworm"): Promise<RpiDisk> {
  const cacheDir = `${rootCacheDir(process.env)}-debs`;
  const parsed = parseImageDescription(
    `name: EOS\nversion: '1.0'\ndistribution: {suite: ${suite}}\nkernel: {cmdline: [console=ttyAMA0]}\npartitions: {root: 64M, esp: 64M, spare: 8M}\n`,
    "rpi.yaml",
  );
  const { desc } = profileDescription(parsed, "RPI", "rpi.yaml");
  const layout = planLayout(desc, "RPI", "aarch64");

  const cached = await cachedArm64Root();
  const tree = join(work, "tree");
  const dtbDir = join(tree, "usr/lib", `linux-image-${KERNEL[suite]}`, "broadcom");
  await mkdir(dtbDir, { recursive: true });
  const realDtbs = cached
    ? (await readdir(join(cached.tree, "usr/lib")))
        .filter((n) => n.startsWith("linux-image-"))
        .map((n) => join(cached.tree, "usr/lib", n, "broadcom"))[0]
    : undefined;
  const real: string[] = [];
  for (const name of DTBS[suite]) {
    if (realDtbs && existsSync(join(realDtbs, name))) {
      await copyFile(join(realDtbs, name), join(dtbDir, name));
      real.push(name);
    } else await writeFile(join(dtbDir, name), `stand-in ${name}`);
  }
  const logs: string[] = [];
  const t0 = performance.now();
  const files = await rpiBootFiles({
    proc: systemRunner(),
    rpi: rpiSuite(suite, "rpi.yaml"),
    mirror: MIRROR,
    cacheDir,
    work,
    tree,
    kernel: KERNEL[suite],
    log: (l) => logs.push(l),
  });
  const bootFilesMs = Math.round(performance.now() - t0);

  const rootImg = join(work, "root.img");
  await mkdir(join(work, "slot/boot"), { recursive: true });
  await writeFile(join(work, "slot/boot/vmlinuz"), "not a kernel");
  await makeRootImage(systemRunner(), desc, join(work, "slot"), rootImg, 1686355200);
  const grub = arm64Grub(work, cached?.grubDeb);
  const esp = await makeArm64Esp(grub, desc, layout, work, { fat32: true, files });

  const raw = join(work, "EOS.aarch64-RPI.raw");
  await assembleDisk(layout, esp, rootImg, raw);
  return { raw, layout, dtbDir, realDtbs: real, realGrub: grub.real, logs, bootFilesMs };
}
