/**
 * The RPI profile's boot files on the build host: the suite's pinned
 * raspi-firmware and u-boot-rpi .debs (src/core/image/rpi.ts) fetched once from the
 * description's mirror into a cache beside the root cache, checked against
 * their pinned sha256 at every use, unpacked with dpkg-deb -x (no emulation),
 * and the device trees of the root tree's own kernel.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { EosError } from "../../core/errors.ts";
import {
  debFileName,
  rpiConfigTxt,
  rpiEspFiles,
  type PinnedDeb,
  type RpiSuite,
} from "../../core/image/rpi.ts";
import { atomicWriteFile } from "../files.ts";
import type { ProcessRunner } from "../process.ts";

export type FetchBytes = (url: string, signal?: AbortSignal) => Promise<Buffer>;

/** http(s) through fetch, file:// from disk (a local mirror). */
export const fetchBytes: FetchBytes = async (url, signal) => {
  if (url.startsWith("file://")) return readFile(fileURLToPath(url));
  const response = await fetch(url, { signal: signal ?? AbortSignal.timeout(120_000) });
  if (!response.ok) throw new EosError("HTTP", `${url}: HTTP ${response.status}`);
  return Buffer.from(await response.arrayBuffer());
};

const sha256 = (data: Buffer) => createHash("sha256").update(data).digest("hex");

/**
 * The pinned .deb from the cache, or fetched from the mirror and cached. A
 * cached file that no longer matches its pin is fetched again.
 */
export async function pinnedDeb(
  deb: PinnedDeb,
  o: { mirror: string; cacheDir: string; fetch?: FetchBytes; signal?: AbortSignal },
): Promise<{ path: string; cached: boolean }> {
  const path = join(o.cacheDir, debFileName(deb));
  const held = await readFile(path).catch(() => undefined);
  if (held && sha256(held) === deb.sha256) return { path, cached: true };
  const url = `${o.mirror.replace(/\/+$/, "")}/${deb.filename}`;
  let data: Buffer;
  try {
    data = await (o.fetch ?? fetchBytes)(url, o.signal);
  } catch (error) {
    const status = error instanceof EosError && error.code === "HTTP" ? error.message : undefined;
    throw new EosError(
      status ? "NOT_FOUND" : "NETWORK",
      `the RPI profile needs ${deb.package} ${deb.version}, and ${status ?? `${url} cannot be fetched: ${(error as Error).message}`}`,
      {
        hint: status
          ? `Debian may have replaced that version: pin the current one (Filename, SHA256, Size from the mirror's Packages index) in src/core/image/rpi.ts`
          : `the first RPI build needs the Debian mirror once; afterwards the file is cached in ${o.cacheDir} (you may also put ${debFileName(deb)} there by hand)`,
      },
    );
  }
  if (sha256(data) !== deb.sha256)
    throw new EosError(
      "HASH_MISMATCH",
      `${url}: sha256 ${sha256(data)} is not the pinned ${deb.sha256} of ${deb.package} ${deb.version}`,
      {
        hint: "a mirror serving other bytes under that name: use another mirror, or pin the new file deliberately",
      },
    );
  await mkdir(o.cacheDir, { recursive: true });
  await atomicWriteFile(path, data);
  return { path, cached: false };
}

export interface RpiBootOptions {
  proc: ProcessRunner;
  /** The description's suite: which .debs, and whether the Pi 5 must boot (rpiSuite). */
  rpi: RpiSuite;
  mirror: string;
  cacheDir: string;
  /** Scratch directory: the .debs are unpacked below it and config.txt written there. */
  work: string;
  /** The root tree and its kernel version (the device trees come from /usr/lib/linux-image-VERSION). */
  tree: string;
  kernel: string;
  log: (line: string) => void;
  fetch?: FetchBytes;
  signal?: AbortSignal;
}

/** Files for the ESP's root, as (host file, name on the FAT) pairs, config.txt included. */
export async function rpiBootFiles(o: RpiBootOptions): Promise<Array<{ src: string; dest: string }>> {
  const roots: Record<string, string> = {
    "kernel-dtbs": join(o.tree, "usr/lib", `linux-image-${o.kernel}`),
  };
  await mkdir(join(o.work, "rpi"), { recursive: true });
  for (const deb of [o.rpi.debs.firmware, o.rpi.debs.uboot]) {
    const { path, cached } = await pinnedDeb(deb, o);
    o.log(`RPI: ${deb.package} ${deb.version} ${cached ? "from the cache" : "fetched"} (${path})`);
    const dest = join(o.work, "rpi", deb.package);
    await o.proc.run(["dpkg-deb", "-x", path, dest], { code: "BUILD" });
    roots[deb.package] = dest;
  }
  const files: Array<{ src: string; dest: string }> = [];
  const missing: string[] = [];
  for (const f of rpiEspFiles(o.rpi)) {
    const src = join(roots[f.source.from] ?? "/nonexistent", f.source.path);
    if (existsSync(src)) files.push({ src, dest: f.dest });
    else if (f.required)
      throw new EosError("BUILD", `${src} is missing: the ${f.board} cannot boot without ${f.dest}`, {
        hint: "the pinned packages or the root's kernel do not have it",
      });
    else missing.push(`${f.dest} (${f.board})`);
  }
  if (missing.length > 0)
    o.log(`RPI: kernel ${o.kernel} has no ${missing.join(", ")}: the image does not boot those boards`);
  const config = join(o.work, "rpi", "config.txt");
  await atomicWriteFile(config, rpiConfigTxt(o.rpi));
  files.push({ src: config, dest: "config.txt" });
  return files;
}
