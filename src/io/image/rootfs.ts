/**
 * The root tree: the base root (src/io/image/base-root.ts: mmdebstrap, or
 * the root cache), then the EOS customisation done from here with argv-only tools: generated files,
 * overlay directories, keys, the Node runtime and the EOS bundles, services,
 * the initramfs with the overlay hook, and a clean-up so that two builds with
 * the same SOURCE_DATE_EPOCH give the same tree. Needs root (dpkg in a
 * chroot, file ownership); see README "Images".
 */
import {
  chmod,
  copyFile,
  mkdir,
  readdir,
  readlink,
  rm,
  stat,
  symlink,
  writeFile,
  lstat,
} from "node:fs/promises";
import { dirname, join } from "node:path";
import { EosError } from "../../core/errors.ts";
import { ARCH_PROFILES, type Architecture } from "../../core/image/arch.ts";
import type { ImageDescription } from "../../core/image/description.ts";
import { rootFiles, type RootFile } from "../../core/image/root-files.ts";
import type { ProcessRunner, RunOptions } from "../process.ts";
import { writeImageKeys, type ImageKeys } from "./image-keys.ts";

export interface RootTreeOptions {
  desc: ImageDescription;
  tree: string;
  /** Overlay directories, already resolved to absolute paths. */
  overlays: string[];
  /** Trusted release and assignment public keys. */
  keys: ImageKeys;
  /** Directory holding the EOS bundles (dist/*.mjs); undefined skips them. */
  distDir: string | undefined;
  /** The Node binary to ship when desc.eos.node is "host". */
  hostNode: string;
  /** update_commit.service as os-update ships it (systemd/ in the checkout). */
  updateCommitUnit: string;
  /** The update server's units (systemd/ in the checkout), for roots that carry os-update-server. */
  serverUnits?: Map<string, string>;
  /** The architecture the root is for, as manifests name it. */
  architecture: Architecture;
  /** Files the build profile adds (src/core/image/ec2.ts). */
  profileFiles?: RootFile[];
  sourceDateEpoch: number;
  log: (line: string) => void;
  signal?: AbortSignal;
  proc: ProcessRunner;
}

function run(o: RootTreeOptions, argv: string[], options: RunOptions = {}) {
  return o.proc.run(argv, { code: "BUILD", ...options });
}

/** Name of a command in the wrappers: letters, digits and . _ - only. */
const SAFE_FILE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$/;

/** Bundles that belong on a device (the build host's `eos` does not). */
export async function deviceCommands(distDir: string | undefined): Promise<string[]> {
  if (!distDir) return [];
  const names = await readdir(distDir).catch(() => [] as string[]);
  return names
    .filter((n) => n.endsWith(".mjs"))
    .map((n) => n.slice(0, -4))
    .filter((n) => n !== "eos" && SAFE_FILE.test(n))
    .sort();
}

function inTree(tree: string, path: string): string {
  if (!path.startsWith("/") || path.split("/").includes("..")) {
    throw new EosError("INTERNAL", `image path ${path} is not absolute or has ..`);
  }
  return join(tree, path);
}

async function copyOverlay(
  o: RootTreeOptions,
  src: string,
  tree: string,
  env: NodeJS.ProcessEnv,
): Promise<void> {
  const st = await stat(src).catch(() => undefined);
  if (!st?.isDirectory()) throw new EosError("CONFIG", `overlay directory ${src} does not exist`);
  // Ownership becomes root (the build runs as root); modes and symlinks are kept.
  await run(o, ["cp", "-R", "--no-dereference", "--preserve=mode,links", "--", `${src}/.`, `${tree}/`], {
    env,
  });
}

async function kernelVersion(tree: string): Promise<string> {
  const names = (await readdir(join(tree, "boot"))).filter((n) => n.startsWith("vmlinuz-")).sort();
  if (names.length !== 1) {
    throw new EosError("BUILD", `expected one kernel in the root tree's /boot, found ${names.length}`, {
      hint: "list no linux-image package: every root gets its architecture's (src/core/image/arch.ts)",
    });
  }
  return (names[0] as string).slice("vmlinuz-".length);
}

async function replaceSymlink(target: string, path: string): Promise<void> {
  await rm(path, { force: true });
  await symlink(target, path);
}

/** Files that differ from one build to the next, or that a device must make itself. */
const VOLATILE = [
  "/etc/ssh/ssh_host_*",
  "/var/lib/apt/lists/*",
  "/var/cache/apt/*.bin",
  "/var/cache/apt/archives/*.deb",
  "/var/cache/ldconfig/aux-cache",
  "/var/log/*.log",
  "/var/log/apt/*",
  "/var/lib/dpkg/*-old",
  "/var/cache/debconf/*-old",
  "/var/lib/systemd/random-seed",
  "/var/lib/dbus/machine-id",
  "/etc/.pwd.lock",
  "/etc/*-",
  "/etc/initramfs-tools/.eos-*",
];

/**
 * Files a package ships that no device runs: trixie's podman carries its
 * system tests' helper (36 MB) beside the runtime in /usr/libexec/podman.
 */
const NOT_SHIPPED = ["/usr/libexec/podman/podman-testing"];

/** Removes from the tree what differs per build (VOLATILE) and what no device runs (NOT_SHIPPED). */
export async function removeVolatile(tree: string): Promise<void> {
  for (const pattern of [...VOLATILE, ...NOT_SHIPPED]) {
    const dir = inTree(tree, dirname(pattern));
    const base = pattern.slice(pattern.lastIndexOf("/") + 1);
    const re = new RegExp(`^${base.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*")}$`);
    const names = await readdir(dir).catch(() => [] as string[]);
    for (const n of names) if (re.test(n)) await rm(join(dir, n), { recursive: true, force: true });
  }
}

/**
 * systemd's ConditionNeedsUpdate= runs a unit when /usr is newer than
 * /etc/.updated or /var/.updated, which systemd-update-done writes at boot:
 * on EOS into the tmpfs overlay, lost at the next boot. Trixie's
 * ldconfig.service has that condition and sits in sysinit before every other
 * service: 4.6 s of an idle TCG boot (9.2 s under load), every boot. The
 * stamps in the slot get the same time as /usr (mksquashfs -all-time), so the
 * root is up to date. Bookworm's systemd has no ldconfig.service: its roots
 * get no stamps and stay as they were.
 */
export async function stampUpdated(tree: string, sourceDateEpoch: number): Promise<boolean> {
  if (!(await lstat(join(tree, "usr/lib/systemd/system/ldconfig.service")).catch(() => undefined)))
    return false;
  const text =
    "# Written by eos build as systemd-update-done would: the root slot is up to date.\n" +
    `TIMESTAMP_NSEC=${sourceDateEpoch}000000000\n`;
  for (const dir of ["etc", "var"]) await writeFile(join(tree, dir, ".updated"), text, { mode: 0o644 });
  return true;
}

/** The environment of mmdebstrap, chroot and systemctl --root: the same for every build. */
export function rootBuildEnv(sourceDateEpoch: number): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin",
    LC_ALL: "C.UTF-8",
    SOURCE_DATE_EPOCH: String(sourceDateEpoch),
    DEBIAN_FRONTEND: "noninteractive",
    ...(process.env.TMPDIR ? { TMPDIR: process.env.TMPDIR } : {}),
  };
}

export async function buildRootTree(o: RootTreeOptions): Promise<{ kernel: string; commands: string[] }> {
  const { desc, tree } = o;
  const env = rootBuildEnv(o.sourceDateEpoch);
  o.log("root tree: EOS files, overlays, keys, commands");
  for (const overlay of o.overlays) await copyOverlay(o, overlay, tree, env);

  // The Node runtime and the EOS bundles.
  let nodePath: string | undefined;
  await mkdir(join(tree, "usr/lib/eos"), { recursive: true });
  if (desc.eos.node === "host") {
    nodePath = "/usr/lib/eos/node";
    await copyFile(o.hostNode, inTree(tree, nodePath));
    await chmod(inTree(tree, nodePath), 0o755);
    const usrBinNode = inTree(tree, "/usr/bin/node");
    if (!(await lstat(usrBinNode).catch(() => undefined))) await symlink("../lib/eos/node", usrBinNode);
  } else if (desc.eos.node === "debian") {
    nodePath = "/usr/bin/node";
  }
  const commands = desc.eos.commands && nodePath ? await deviceCommands(o.distDir) : [];
  for (const name of commands) {
    const target = inTree(tree, `/usr/lib/eos/${name}.mjs`);
    await copyFile(join(o.distDir as string, `${name}.mjs`), target);
    await chmod(target, 0o755);
  }
  if (commands.length > 0) {
    // The code the commands share and load on demand (see scripts/bundle.mjs).
    const chunks = inTree(tree, "/usr/lib/eos/chunks");
    await mkdir(chunks, { recursive: true });
    for (const chunk of await readdir(join(o.distDir as string, "chunks")))
      if (chunk.endsWith(".mjs"))
        await copyFile(join(o.distDir as string, "chunks", chunk), join(chunks, chunk));
  }

  await writeImageKeys(tree, o.keys);

  for (const f of rootFiles(desc, {
    keyNames: [...o.keys.release.keys()].sort(),
    commands,
    nodePath,
    updateCommitUnit: o.updateCommitUnit,
    ...(o.serverUnits ? { serverUnits: o.serverUnits } : {}),
    architecture: o.architecture,
  }).concat(o.profileFiles ?? [])) {
    const path = inTree(tree, f.path);
    await mkdir(dirname(path), { recursive: true });
    await rm(path, { force: true });
    if (f.link !== undefined) {
      await symlink(f.link, path);
      continue;
    }
    await writeFile(path, f.content, { mode: f.mode });
    await chmod(path, f.mode);
  }
  await chmod(inTree(tree, "/root"), 0o700);
  if (desc.users.root.ssh_authorized_keys.length > 0) await chmod(inTree(tree, "/root/.ssh"), 0o700);
  // Debian points /etc/os-release at /usr/lib/os-release; keep it that way.
  await replaceSymlink("../usr/lib/os-release", inTree(tree, "/etc/os-release"));
  for (const dir of ["/boot/efi", "/media/root-ro", "/media/root-rw"]) {
    await mkdir(inTree(tree, dir), { recursive: true });
  }

  // The kernel and initrd where GRUB and os-update (kexec) look: /boot/vmlinuz, /boot/initrd.img.
  const kernel = await kernelVersion(tree);
  await replaceSymlink(`vmlinuz-${kernel}`, inTree(tree, "/boot/vmlinuz"));
  await replaceSymlink(`initrd.img-${kernel}`, inTree(tree, "/boot/initrd.img"));

  o.log("root tree: services");
  const enable = ["update_commit.service", ...desc.services.enable];
  await run(o, ["systemctl", `--root=${tree}`, "enable", ...enable], { env });
  await run(o, ["systemctl", `--root=${tree}`, "set-default", "multi-user.target"], { env });
  if (desc.services.disable.length > 0)
    await run(o, ["systemctl", `--root=${tree}`, "disable", ...desc.services.disable], { env });
  if (desc.services.mask.length > 0)
    await run(o, ["systemctl", `--root=${tree}`, "mask", ...desc.services.mask], { env });

  // With the initramfs deferred (arm64), this is its first and only run: -c creates it.
  const deferred = ARCH_PROFILES[o.architecture].deferInitramfs;
  o.log(
    `root tree: initramfs for ${kernel} (squashfs, overlay, tmpfs root hook${deferred ? "; the one run mmdebstrap deferred" : ""})`,
  );
  await run(o, ["chroot", tree, "update-initramfs", deferred ? "-c" : "-u", "-k", kernel], {
    env,
    capture: false,
    ...(o.signal ? { signal: o.signal } : {}),
  });
  const initrd = await readlink(inTree(tree, "/boot/initrd.img"));
  if (!(await stat(inTree(tree, `/boot/${initrd}`)).catch(() => undefined))) {
    throw new EosError("BUILD", `update-initramfs did not write /boot/${initrd}`);
  }
  await removeVolatile(tree);
  await stampUpdated(tree, o.sourceDateEpoch);
  return { kernel, commands };
}
