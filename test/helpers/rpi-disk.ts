/**
 * An RPI disk (`eos build --profile RPI`'s ESP and GPT steps) without
 * emulation, for the tests that read one (rpi-disk) or update one
 * (rpi-firmware): the suite's real pinned raspi-firmware and u-boot-rpi .debs
 * (fetched once into the build's cache, EOS_CACHE_DIR-debs), a tiny root tree
 * with the kernel's device trees: bookworm's from a cached arm64 root where
 * this machine has one, trixie's out of trixie's arm64 kernel .deb (fetched
 * once into the same cache, its DTBs extracted once beside it); stand-ins
 * where neither can be had.
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, readdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { EosError } from "../../src/core/errors.ts";
import { parseImageDescription } from "../../src/core/image/description.ts";
import { profileDescription } from "../../src/core/image/ec2.ts";
import { planLayout, type DiskLayout } from "../../src/core/image/layout.ts";
import { debFileName, rpiSuite, type PinnedDeb } from "../../src/core/image/rpi.ts";
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
  /** The DTBs copied from a real kernel (cached root, trixie's .deb); the others are stand-ins. */
  realDtbs: string[];
  /** Where the real DTBs came from, or why there are none. */
  dtbSource: string;
  /** GRUB's arm64 modules were real. */
  realGrub: boolean;
  /** What rpiBootFiles logged. */
  logs: string[];
  bootFilesMs: number;
}

/**
 * trixie's arm64 kernel, only for its real Pi 4 and Pi 5 device trees (93 MB
 * once). When Debian drops this version from the mirror, pin the current
 * linux-image-*-arm64 from dists/trixie/main/binary-arm64/Packages.
 */
const TRIXIE_KERNEL: PinnedDeb = {
  package: "linux-image-6.12.117+deb13-arm64",
  version: "6.12.117-1",
  filename: "pool/main/l/linux-signed-arm64/linux-image-6.12.117+deb13-arm64_6.12.117-1_arm64.deb",
  sha256: "73805585385c78e048e63fdfba66da36bab724c2cdebd96a3055a8a4f1ae287a",
  size: 93443312,
};

/** A directory with the trixie kernel's `names` (broadcom/), or why there is none. */
async function trixieDtbs(cacheDir: string, names: string[]): Promise<{ dir?: string; why?: string }> {
  const dir = join(cacheDir, debFileName(TRIXIE_KERNEL).replace(/\.deb$/, ".dtbs"));
  if (names.every((n) => existsSync(join(dir, n)))) return { dir };
  let deb: string;
  try {
    deb = (await pinnedDeb(TRIXIE_KERNEL, { mirror: MIRROR, cacheDir })).path;
  } catch (error) {
    if (error instanceof EosError && (error.code === "NETWORK" || error.code === "NOT_FOUND"))
      return { why: error.message };
    throw error;
  }
  const tmp = await mkdtemp(join(cacheDir, ".dtbs-"));
  // The package is named after its directory: /usr/lib/linux-image-VERSION/broadcom.
  const inside = names.map((n) => `./usr/lib/${TRIXIE_KERNEL.package}/broadcom/${n}`);
  const r = spawnSync("sh", [
    "-c",
    'deb="$0"; into="$1"; shift; dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$into" --strip-components=5 "$@"',
    deb,
    tmp,
    ...inside,
  ]);
  if (r.status !== 0) {
    await rm(tmp, { recursive: true, force: true });
    throw new Error(`extracting DTBs from ${deb}: ${r.stderr.toString()}`);
  }
  await rm(dir, { recursive: true, force: true });
  await rename(tmp, dir);
  return { dir };
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
  let realDtbs: string | undefined;
  let dtbSource: string;
  if (suite === "trixie") {
    const got = await trixieDtbs(cacheDir, DTBS.trixie);
    realDtbs = got.dir;
    dtbSource = got.dir ? `${TRIXIE_KERNEL.package} ${TRIXIE_KERNEL.version}` : `stand-ins: ${got.why}`;
  } else {
    realDtbs = cached
      ? (await readdir(join(cached.tree, "usr/lib")))
          .filter((n) => n.startsWith("linux-image-"))
          .map((n) => join(cached.tree, "usr/lib", n, "broadcom"))[0]
      : undefined;
    dtbSource = realDtbs ? `the cached arm64 root (${realDtbs})` : "stand-ins: no cached arm64 root";
  }
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
  return { raw, layout, dtbDir, realDtbs: real, dtbSource, realGrub: grub.real, logs, bootFilesMs };
}
