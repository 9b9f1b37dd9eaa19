/**
 * The base root: `mmdebstrap` (minbase, no Recommends, no docs) of the
 * description's packages for one architecture, nothing EOS-specific yet.
 * It is the slow, emulated part of a foreign-architecture build, and the
 * same for every build with the same inputs, so it comes from the root
 * cache (src/io/image/root-cache.ts) unless the build asks for --no-cache.
 */
import { createHash } from "node:crypto";
import { mkdir, readdir, readFile, rename } from "node:fs/promises";
import { join } from "node:path";
import { EosError } from "../../core/errors.ts";
import { ARCH_PROFILES, type Architecture } from "../../core/image/arch.ts";
import { packageList, type ImageDescription } from "../../core/image/description.ts";
import { NO_DOCS_DPKG_OPTIONS } from "../../core/image/containers.ts";
import { archiveIndexPaths, baseRootInputs, baseRootKey } from "../../core/image/root-cache.ts";
import type { ProcessRunner } from "../process.ts";
import { removeTree, type RootCache } from "./root-cache.ts";

export interface BaseRootOptions {
  desc: ImageDescription;
  architecture: Architecture;
  /** Where the tree goes (must not exist yet). */
  tree: string;
  /** Where the boot loader .debs go (grub-efi-<arch>-bin, for its modules). */
  bootDir: string;
  sourceDateEpoch: number;
  /** undefined: build without the cache (--no-cache). */
  cache: RootCache | undefined;
  env: NodeJS.ProcessEnv;
  log: (line: string) => void;
  proc: ProcessRunner;
  signal?: AbortSignal;
  /** Fetches an archive index (tests pass their own); default: fetch / file://. */
  fetchIndex?: (url: string) => Promise<Buffer>;
}

/** Inside the tree while mmdebstrap runs; moved out to bootDir afterwards. */
const BOOT_DEBS = "/var/cache/eos-boot";

/** A stub that stands in for update-initramfs while packages install: one real run comes after. */
const DEFER_INITRAMFS = [
  'chroot "$1" dpkg-divert --quiet --local --rename --divert /usr/sbin/update-initramfs.eos-real --add /usr/sbin/update-initramfs',
  // trixie's kernel hook skips itself unless --version names initramfs-tools: keep the stub honest.
  `printf '%s\\n' '#!/bin/sh' 'if [ "$1" = --version ]; then echo "initramfs-tools (deferred by EOS)"; exit 0; fi' 'echo "EOS: update-initramfs $* deferred to one run after mmdebstrap" >&2' > "$1/usr/sbin/update-initramfs"`,
  'chmod 755 "$1/usr/sbin/update-initramfs"',
].join(" && ");

const RESTORE_INITRAMFS = [
  'rm -f "$1/usr/sbin/update-initramfs"',
  'chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs',
].join(" && ");

export function mmdebstrapArgv(desc: ImageDescription, architecture: Architecture, tree: string): string[] {
  const arch = ARCH_PROFILES[architecture];
  const foreign = architecture !== "x86_64";
  const argv = [
    "mmdebstrap",
    "--mode=root",
    "--variant=minbase",
    "--format=directory",
    // x86_64 keeps its original argv, so its trees (and images) stay what they were.
    ...(foreign ? [`--architectures=${arch.debian}`] : []),
    `--components=${desc.distribution.components.join(",")}`,
    `--include=${packageList(desc, architecture).join(",")}`,
    '--aptopt=APT::Install-Recommends "false"',
    ...NO_DOCS_DPKG_OPTIONS,
    "--dpkgopt=path-exclude=/usr/share/lintian/*",
  ];
  if (arch.deferInitramfs)
    argv.push(`--essential-hook=${DEFER_INITRAMFS}`, `--customize-hook=${RESTORE_INITRAMFS}`);
  if (foreign)
    // The host has no GRUB modules for a foreign target: fetch the .deb from the same
    // archive state as the root, with mmdebstrap's own apt configuration (native apt, no emulation).
    argv.push(
      `--customize-hook=mkdir -p "$1${BOOT_DEBS}" && cd "$1${BOOT_DEBS}" && APT_CONFIG="$MMDEBSTRAP_APT_CONFIG" apt-get -q -o APT::Sandbox::User=root download ${arch.grubPackage}`,
    );
  argv.push(desc.distribution.suite, tree, desc.distribution.mirror);
  return argv;
}

export async function defaultFetchIndex(url: string): Promise<Buffer> {
  if (url.startsWith("file://")) return readFile(new URL(url));
  let response: Response;
  try {
    response = await fetch(url, { signal: AbortSignal.timeout(60_000) });
  } catch (error) {
    throw new EosError("NETWORK", `cannot fetch ${url}: ${(error as Error).message}`, {
      hint: "the mirror must be reachable to key the root cache; or build with --no-cache",
    });
  }
  if (!response.ok)
    throw new EosError("HTTP", `${url}: HTTP ${response.status}`, {
      hint: "check distribution.mirror and distribution.suite in the description",
    });
  return Buffer.from(await response.arrayBuffer());
}

async function runMmdebstrap(o: BaseRootOptions, tree: string, bootDir: string): Promise<void> {
  await o.proc.run(mmdebstrapArgv(o.desc, o.architecture, tree), {
    code: "BUILD",
    env: o.env,
    capture: false,
    group: true,
    onLine: (l) => {
      if (/^(I|W|E): /.test(l) || l.startsWith("EOS: ")) o.log(`mmdebstrap: ${l}`);
    },
    ...(o.signal ? { signal: o.signal } : {}),
  });
  const debs = join(tree, BOOT_DEBS);
  const names = await readdir(debs).catch(() => [] as string[]);
  await mkdir(bootDir, { recursive: true });
  for (const n of names) await rename(join(debs, n), join(bootDir, n));
  if (names.length > 0) await removeTree(debs);
}

/** Makes the base root in o.tree (and its boot .debs in o.bootDir); says whether the cache had it. */
export async function makeBaseRoot(o: BaseRootOptions): Promise<{ cached: boolean; key?: string }> {
  const { desc } = o;
  await removeTree(o.tree);
  const what = `mmdebstrap ${desc.distribution.suite} ${ARCH_PROFILES[o.architecture].debian} (${packageList(desc, o.architecture).length} packages and their dependencies)`;
  if (!o.cache) {
    o.log(`base root: ${what}, without the cache (--no-cache)`);
    await runMmdebstrap(o, o.tree, o.bootDir);
    return { cached: false };
  }
  const fetchIndex = o.fetchIndex ?? defaultFetchIndex;
  const archive: Record<string, string> = {};
  const mirror = desc.distribution.mirror.replace(/\/+$/, "");
  for (const path of archiveIndexPaths(desc.distribution.suite))
    archive[path] = createHash("sha256")
      .update(await fetchIndex(`${mirror}/${path}`))
      .digest("hex");
  const inputs = baseRootInputs(desc, o.architecture, archive, o.sourceDateEpoch);
  const key = baseRootKey(inputs);
  const { entry, built } = await o.cache.obtain(inputs, async (fresh) => {
    o.log(`base root: cache miss (key ${key.slice(0, 16)}…): ${what} into ${fresh.dir}`);
    await runMmdebstrap(o, fresh.tree, fresh.boot);
  });
  if (!built) o.log(`base root: cache hit, ${entry.dir} (key ${key.slice(0, 16)}…)`);
  await o.cache.restore(entry, o.tree);
  await mkdir(o.bootDir, { recursive: true });
  for (const n of await readdir(entry.boot))
    await o.proc.run(["cp", "-a", "--", join(entry.boot, n), join(o.bootDir, n)], { code: "BUILD" });
  return { cached: !built, key };
}

/**
 * GRUB's modules for a foreign target, from the grub-efi-<arch>-bin .deb the
 * base root fetched; undefined on x86_64, where the host's own are used.
 */
export async function foreignGrubModules(
  proc: ProcessRunner,
  architecture: Architecture,
  bootDebs: string,
  work: string,
): Promise<string | undefined> {
  if (architecture === "x86_64") return undefined;
  const arch = ARCH_PROFILES[architecture];
  const debs = (await readdir(bootDebs).catch(() => [] as string[])).filter((n) =>
    n.startsWith(`${arch.grubPackage}_`),
  );
  if (debs.length !== 1)
    throw new EosError(
      "BUILD",
      `expected one ${arch.grubPackage} .deb in ${bootDebs}, found ${debs.length}`,
      {
        hint: "build again with --no-cache (the cached root lacks its boot loader packages)",
      },
    );
  const dest = join(work, "grub-modules");
  await proc.run(["dpkg-deb", "-x", join(bootDebs, debs[0] as string), dest], { code: "BUILD" });
  return join(dest, "usr/lib/grub", arch.grubTarget);
}
