/**
 * The vm tier's images: built once with `eos build` and cached under
 * .tmp/vm/images/<key>, where the key covers the description, the overlay
 * files, the build code, the EOS bundles in dist/, the Node binary and the
 * ISO week (so bookworm's package updates arrive at least weekly).
 * EOS_VM_REBUILD=1 forces a rebuild. A test SSH key is baked into these
 * images: they are for tests only.
 */
import { consoleContext } from "./context.ts";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { spawnSync } from "node:child_process";
import { parse, stringify } from "yaml";
import type { Architecture } from "../../src/core/image/arch.ts";
import type { Profile } from "../../src/core/image/description.ts";
import { buildImage, imageFileBase, type BuildResult } from "../../src/io/image/build.ts";
import { MACHINE_HOSTS } from "../../src/io/machine/host.ts";
import type { Context } from "../../src/io/context.ts";
import { generateReleaseKeys } from "../../src/io/keys.ts";
import type { DemoOptions } from "../../src/io/demo.ts";

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const VM_TMP = join(REPO, ".tmp/vm");
/** Fixed so that cached and fresh builds agree and the root hash is reproducible. */
export const TEST_SOURCE_DATE_EPOCH = 1_700_000_000;

export interface TestKeys {
  sshKey: string;
  sshPub: string;
  releaseKey: string;
  releasePub: string;
}

export interface TestImage extends TestKeys {
  raw: string;
  dir: string;
  description: string;
  build: BuildResult;
  cached: boolean;
}

export interface TestImageOptions {
  /** The description, relative to the checkout (default images/default.yaml). */
  description?: string;
  name?: string;
  version?: string;
  profile?: Profile;
  /** Default x86_64; aarch64 builds under qemu-user (give it images/aarch64.yaml). */
  architecture?: Architecture;
  /** Extra packages (v2 of the demo carries one more). */
  packages?: string[];
  /** Also write NAME.raw.xz (off by default: the tests boot the raw image). */
  xz?: boolean;
  /** Changes to the parsed default description before it is written. */
  edit?: (desc: Record<string, unknown>) => void;
}

/** Why the vm tier cannot build and boot an image of this architecture here, or undefined when it can. */
export function vmSkipReason(architecture: Architecture = "x86_64"): string | undefined {
  if (process.getuid?.() !== 0) return "eos build needs root (mmdebstrap --mode=root, chroot)";
  const host = MACHINE_HOSTS[architecture];
  for (const tool of ["mmdebstrap", "mksquashfs", host.qemu, "qemu-img", "grub-mkimage", "mcopy", "ssh"]) {
    if (spawnSync("sh", ["-c", 'command -v "$1"', "sh", tool]).status !== 0)
      return `${tool} is not installed`;
  }
  if (!existsSync(host.firmwareCode)) return `${host.firmwareCode} is missing (${host.packages})`;
  if (architecture !== "x86_64" && !existsSync(`/proc/sys/fs/binfmt_misc/qemu-${architecture}`))
    return `no qemu-${architecture} binfmt handler for the emulated build (scripts/setup.sh)`;
  return undefined;
}

export async function testKeys(): Promise<TestKeys> {
  const dir = join(VM_TMP, "keys");
  await mkdir(dir, { recursive: true });
  const sshKey = join(dir, "id_ed25519");
  if (!existsSync(sshKey)) {
    const r = spawnSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "eos-vm-tests", "-f", sshKey]);
    if (r.status !== 0) throw new Error(`ssh-keygen: ${r.stderr.toString()}`);
  }
  const releaseKey = join(dir, "release.key");
  if (!existsSync(releaseKey)) await generateReleaseKeys(dir, true);
  return { sshKey, sshPub: `${sshKey}.pub`, releaseKey, releasePub: join(dir, "release.pub") };
}

async function hashTree(hash: ReturnType<typeof createHash>, dir: string): Promise<void> {
  const entries = (await readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1));
  for (const e of entries) {
    const p = join(dir, e.name);
    hash.update(`${relative(REPO, p)}\0`);
    if (e.isDirectory()) await hashTree(hash, p);
    else if (e.isFile()) hash.update(await readFile(p));
  }
}

function isoWeek(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const day = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - day);
  const year = t.getUTCFullYear();
  const week = Math.ceil(((t.getTime() - Date.UTC(year, 0, 1)) / 86400000 + 1) / 7);
  return `${year}-W${week}`;
}

function stderrContext(): Context {
  return consoleContext({ ...process.env, SOURCE_DATE_EPOCH: String(TEST_SOURCE_DATE_EPOCH) });
}

/** Builds (or reuses) an image from images/default.yaml (or `description`) with the test SSH key baked in. */
export async function testImage(options: TestImageOptions = {}): Promise<TestImage> {
  const keys = await testKeys();
  const source = options.description ?? "images/default.yaml";
  const desc = parse(await readFile(join(REPO, source), "utf8")) as Record<string, unknown>;
  if (options.name) desc.name = options.name;
  if (options.version) {
    desc.version = options.version;
    desc.pretty_name = `EOS ${options.version} (test)`;
  }
  desc.files = ((desc.files as string[] | undefined) ?? []).map((f) => resolve(REPO, dirname(source), f));
  desc.users = {
    root: { ssh_authorized_keys: [(await readFile(keys.sshPub, "utf8")).trim()], autologin_serial: true },
  };
  desc.packages = [...((desc.packages as string[] | undefined) ?? []), ...(options.packages ?? [])];
  options.edit?.(desc);
  const text = stringify(desc);
  const profile = options.profile ?? "AB";
  const architecture = options.architecture ?? "x86_64";

  const hash = createHash("sha256");
  hash
    .update(text)
    .update(profile)
    .update(options.xz ? "xz" : "raw")
    .update(isoWeek(new Date()))
    .update(process.version);
  // Only another architecture adds to the key: x86_64 images cached before keep theirs.
  if (architecture !== "x86_64") hash.update(architecture);
  // What decides an image's bytes: the files it carries, the build code, the boot contract.
  for (const dir of [
    "images/files",
    "images/update-server-files",
    "src/io/image",
    "src/core/image",
    "systemd",
  ]) {
    if (existsSync(join(REPO, dir))) await hashTree(hash, join(REPO, dir));
  }
  // The device bundles that go into the image (not the build host's own eos.mjs).
  const dist = join(REPO, "dist");
  for (const n of existsSync(dist) ? (await readdir(dist)).sort() : []) {
    if (n.endsWith(".mjs") && n !== "eos.mjs") hash.update(n).update(await readFile(join(dist, n)));
  }
  for (const f of ["src/core/gpt.ts", "src/core/update/grubenv.ts"]) {
    hash.update(await readFile(join(REPO, f)));
  }
  hash.update(await readFile(keys.releasePub));
  const key = hash.digest("hex").slice(0, 16);
  const dir = join(VM_TMP, "images", key);
  const description = join(dir, "description.yaml");
  const name = imageFileBase(String(desc.name), architecture, profile);
  const raw = join(dir, `${name}.raw`);
  const resultFile = join(dir, `${name}.build.json`);
  if (!process.env.EOS_VM_REBUILD && existsSync(raw) && existsSync(resultFile)) {
    const build = JSON.parse(await readFile(resultFile, "utf8")) as BuildResult;
    return { ...keys, raw, dir, description, build, cached: true };
  }
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  await writeFile(description, text);
  const ctx = stderrContext();
  const build = await buildImage(ctx, {
    description,
    profile,
    architecture,
    outDir: dir,
    keys: [keys.releaseKey],
    workDir: join(VM_TMP, "work", key),
    noXz: !options.xz,
  });
  await pruneImages(8);
  return { ...keys, raw, dir, description, build, cached: false };
}

/** Keeps the newest `keep` cached images. */
async function pruneImages(keep: number): Promise<void> {
  const root = join(VM_TMP, "images");
  const dirs = await Promise.all(
    (await readdir(root)).map(async (n) => ({ n, t: (await stat(join(root, n))).mtimeMs })),
  );
  dirs.sort((a, b) => b.t - a.t);
  for (const d of dirs.slice(keep)) await rm(join(root, d.n), { recursive: true, force: true });
}

/** The vm tier's image of the default description (every boot test but the demo's). */
export const VM_TEST_IMAGE: TestImageOptions = { version: "1.0.0-test" };

/** What the newer basesystem has that the test image's lacks (registry.test's flake calls it). */
export const NEWER_BASE_PACKAGE = "hello";

/**
 * The test image as an OS update that brings a newer basesystem (one more
 * package in it) would write it: registry.test puts its root into slot B.
 */
export const VM_TEST_IMAGE_NEWER_BASE: TestImageOptions = {
  version: "1.1.0-test",
  edit: (desc) => {
    desc.containers = [{ name: "basesystem", packages: [NEWER_BASE_PACKAGE] }];
  },
};

/** How the vm tier runs the demo: the update test and the background build agree on it. */
export function demoTestOptions(log: (line: string) => void): DemoOptions {
  return {
    workDir: join(VM_TMP, "demo"),
    description: join(REPO, "images/default.yaml"),
    port: 18080,
    extraPackage: "tree",
    rebuild: false,
    log,
  };
}

/**
 * How the vm tier runs the update cycle on arm64: the minimal arm64 description (no
 * podman: every package is emulated work), v2 the same root with a new version, and
 * the cycle only until v2 is committed. One emulated boot sequence: check, apply, kexec
 * into slot B, commit. The update test and the background build agree on it.
 */
export function demoTestOptionsAarch64(log: (line: string) => void): DemoOptions {
  return {
    // Its own keys and token: the background build makes these beside the x86_64 demo's.
    workDir: join(VM_TMP, "demo-aarch64"),
    description: join(REPO, "images/aarch64-minimal.yaml"),
    port: 18081,
    architecture: "aarch64",
    through: "commit",
    rebuild: false,
    log,
  };
}
