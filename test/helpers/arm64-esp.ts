/**
 * What the arm64 disk tests (aarch64-disk, rpi-disk, rpi-firmware) share: GRUB's arm64
 * modules from a cached arm64 root when this machine has built one, and a
 * stand-in for grub-mkimage where it has not, so that the ESP step runs for
 * real either way and only GRUB's own bytes are faked.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { ImageDescription } from "../../src/core/image/description.ts";
import type { DiskLayout } from "../../src/core/image/layout.ts";
import { makeEsp, type EspExtras } from "../../src/io/image/disk.ts";
import { rootCacheDir } from "../../src/io/image/root-cache.ts";
import { systemRunner, type ProcessRunner } from "../../src/io/process.ts";

export const MTOOLS_ENV = { ...process.env, MTOOLS_SKIP_CHECK: "1" };

/** A cached arm64 root (its tree, and grub-efi-arm64-bin when the build kept it). */
export async function cachedArm64Root(): Promise<{ tree: string; grubDeb: string | undefined } | undefined> {
  const dir = rootCacheDir(process.env);
  for (const entry of await readdir(dir).catch(() => [] as string[])) {
    if (!entry.startsWith("aarch64-") || entry.includes(".tmp-") || entry.endsWith(".lock")) continue;
    if (!existsSync(join(dir, entry, "meta.json"))) continue;
    const debs = await readdir(join(dir, entry, "boot")).catch(() => [] as string[]);
    const deb = debs.find((n) => n.startsWith("grub-efi-arm64-bin_"));
    return { tree: join(dir, entry, "tree"), grubDeb: deb ? join(dir, entry, "boot", deb) : undefined };
  }
  return undefined;
}

export interface Arm64Grub {
  /** The directory grub-mkimage is given with -d. */
  moduleDir: string;
  /** Whether grub-mkimage really runs (the modules are real) or is stood in for. */
  real: boolean;
  /** Runs everything for real except grub-mkimage without real modules; records grub-mkimage's argv. */
  proc: ProcessRunner;
  mkimageCalls: string[][];
}

/** GRUB for an arm64 ESP under `work`: the real modules from `grubDeb`, or a stand-in. */
export function arm64Grub(work: string, grubDeb: string | undefined): Arm64Grub {
  let moduleDir = join(work, "fake-modules");
  if (grubDeb) {
    assert.equal(spawnSync("dpkg-deb", ["-x", grubDeb, join(work, "grub")]).status, 0);
    moduleDir = join(work, "grub/usr/lib/grub/arm64-efi");
  }
  const mkimageCalls: string[][] = [];
  const system = systemRunner();
  const proc: ProcessRunner = {
    start: (argv, o) => system.start(argv, o),
    run: async (argv, o) => {
      if (argv[0] === "grub-mkimage") {
        mkimageCalls.push(argv);
        if (!grubDeb) {
          await writeFile(argv[argv.indexOf("-o") + 1] as string, "stand-in for GRUB");
          return { code: 0, signal: null, stdout: "", stdoutBytes: Buffer.alloc(0), stderr: "" };
        }
      }
      return system.run(argv, o);
    },
  };
  return { moduleDir, real: grubDeb !== undefined, proc, mkimageCalls };
}

/** The real ESP step of an arm64 build of image "EOS" 1.0 into `work`/esp.img, with `grub`. */
export async function makeArm64Esp(
  grub: Arm64Grub,
  desc: ImageDescription,
  layout: DiskLayout,
  work: string,
  extras?: EspExtras,
): Promise<string> {
  const esp = join(work, "esp.img");
  const slotA = { version: "1.0", sha256: "a".repeat(64), size: layout.slotA.size, verity: undefined };
  const identity = { image: "EOS", architecture: "aarch64" } as const;
  await makeEsp(grub.proc, desc, layout, work, esp, 1686355200, slotA, identity, grub.moduleDir, extras);
  return esp;
}

/** One file of a FAT image, read with mtools (the host kernel here has no vfat). */
export function fatFile(image: string, path: string): Buffer {
  const r = spawnSync("mtype", ["-i", image, `::${path}`], { env: MTOOLS_ENV, maxBuffer: 64 << 20 });
  assert.equal(r.status, 0, `${path}: ${r.stderr.toString()}`);
  return r.stdout;
}
