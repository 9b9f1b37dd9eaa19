/**
 * A small KIS image for the vm tier and bench/vm-launch, built here from
 * Debian's cloud kernel, busybox, the host's bash and the guest init `sci`:
 *
 *   kernel  Debian linux-image-*-cloud-amd64 (bzImage), fetched with apt-get download
 *   initrd  newc cpio (gzip): /init = sci, the virtio/overlay/vsock modules and
 *           /lib/modules/sci.order (the order sci loads them in)
 *   rootfs  ext4: busybox, /bin/bash (+ its libraries), /usr/sbin/sci, test programs
 *
 * and the KIS tarball of those (tar.xz with NAME.ext4, NAME.kernel, NAME.initrd,
 * NAME.sha256). Everything is cached under .tmp/kis/<key>/, keyed by the
 * inputs (sci's source, the kernel version, this file's recipe version).
 */
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { basename, dirname, join } from "node:path";
import { gzipSync } from "node:zlib";
import { REPO } from "./run.ts";

const RECIPE = "kis-5";
export const KIS_CACHE = join(REPO, ".tmp", "kis");
const SCI_SOURCE = join(REPO, "guest", "sci", "sci.c");

/** Modules the guest needs from a Debian cloud kernel (dependencies are added). */
export const GUEST_MODULES = [
  "virtio_mmio",
  "virtio_pci",
  "virtio_blk",
  "virtio_console",
  "overlay",
  "vmw_vsock_virtio_transport",
  "virtio_net",
];

/** Programs in the test image (beside busybox and bash). */
export const TEST_PROGRAMS: Record<string, string> = {
  "/usr/bin/streams": "#!/bin/sh\necho to-stdout\necho to-stderr >&2\necho more-stdout\n",
  "/usr/bin/upper": "#!/bin/sh\nexec tr a-z A-Z\n",
  "/usr/bin/counter":
    '#!/bin/sh\nn=$(cat /var/count 2>/dev/null || echo 0)\nn=$((n+1))\necho "$n" > /var/count\necho "count=$n boot=$(cat /proc/sys/kernel/random/boot_id)"\n',
  "/usr/bin/wait-int":
    "#!/bin/sh\ntrap 'echo got-int; exit 130' INT\necho ready\nwhile :; do sleep 0.1; done\n",
};

export interface KisImage {
  dir: string;
  kernel: string;
  initrd: string;
  rootfs: string;
  /** tar.xz with NAME.ext4, NAME.kernel, NAME.initrd, NAME.sha256 */
  tarball: string;
  kernelVersion: string;
}

/** Why the KIS image cannot be built here, or undefined. */
export function kisSkipReason(): string | undefined {
  if (process.getuid?.() !== 0) return "needs root (apt-get download, mke2fs -d with owners)";
  for (const [tool, pkg] of [
    ["gcc", "gcc"],
    ["mke2fs", "e2fsprogs"],
    ["xz", "xz-utils"],
    ["apt-get", "apt"],
    ["qemu-system-x86_64", "qemu-system-x86"],
  ] as const) {
    const r = spawnSync(tool, ["--version"], { stdio: "ignore" });
    if (r.error) return `${tool} is not installed (${pkg})`;
  }
  if (!existsSync("/bin/busybox")) return "needs /bin/busybox (busybox-static)";
  if (!existsSync("/usr/lib/x86_64-linux-gnu/libc.a")) return "needs static glibc (libc6-dev) for sci";
  return undefined;
}

function sh(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", cwd: opts.cwd, maxBuffer: 1 << 26 });
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: exit ${r.status}: ${r.stderr}`);
  return r.stdout;
}

/** The Debian cloud kernel package, extracted (cached: apt runs once per machine). */
function debianKernel(): { root: string; version: string } {
  const base = join(KIS_CACHE, "kernel");
  const done = join(base, "version");
  if (existsSync(done)) {
    const version = readFileSync(done, "utf8").trim();
    return { root: join(base, "x"), version };
  }
  const dl = join(base, "dl");
  rmSync(base, { recursive: true, force: true });
  mkdirSync(dl, { recursive: true });
  chmodSync(dl, 0o777); // apt's _apt user writes there
  sh("apt-get", ["download", "-q", "linux-image-cloud-amd64"], { cwd: dl });
  const meta = readdirSync(dl).find((f) => f.startsWith("linux-image-cloud-amd64_"));
  if (!meta) throw new Error("apt-get download linux-image-cloud-amd64 gave no package");
  const depends = sh("dpkg-deb", ["-f", join(dl, meta), "Depends"]);
  const pkg = /linux-image-[0-9][^ ,]*-cloud-amd64/.exec(depends)?.[0];
  if (!pkg) throw new Error(`linux-image-cloud-amd64 depends on no kernel: ${depends}`);
  sh("apt-get", ["download", "-q", pkg], { cwd: dl });
  const deb = readdirSync(dl).find((f) => f.startsWith(`${pkg}_`));
  if (!deb) throw new Error(`apt-get download ${pkg} gave no package`);
  sh("dpkg-deb", ["-x", join(dl, deb), join(base, "x")]);
  const version = pkg.replace(/^linux-image-/, "");
  rmSync(dl, { recursive: true, force: true });
  writeFileSync(done, `${version}\n`);
  return { root: join(base, "x"), version };
}

/** `depends=` of a .ko file's .modinfo section. */
function moduleDepends(ko: string): string[] {
  const text = readFileSync(ko).toString("latin1");
  const m = /\0depends=([^\0]*)\0/.exec(text);
  return m?.[1] ? m[1].split(",").filter(Boolean) : [];
}

/** Module files in load order (dependencies first). */
function moduleOrder(modulesDir: string, wanted: string[]): string[] {
  const index = new Map<string, string>();
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".ko")) index.set(e.name.slice(0, -3).replace(/-/g, "_"), p);
    }
  };
  walk(modulesDir);
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (name: string) => {
    const key = name.replace(/-/g, "_");
    if (seen.has(key)) return;
    seen.add(key);
    const file = index.get(key);
    if (!file) throw new Error(`kernel module ${name} not found under ${modulesDir}`);
    for (const dep of moduleDepends(file)) visit(dep);
    order.push(file);
  };
  for (const w of wanted) visit(w);
  return order;
}

// ---------------------------------------------------------------- cpio (newc)

interface CpioEntry {
  name: string;
  mode: number;
  data?: Buffer;
  rdev?: [number, number];
}

function cpio(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const hex = (n: number) => n.toString(16).padStart(8, "0");
  const pad4 = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  const add = (e: CpioEntry) => {
    const data = e.data ?? Buffer.alloc(0);
    const name = Buffer.from(`${e.name}\0`);
    const header =
      "070701" +
      hex(ino++) +
      hex(e.mode) +
      hex(0) +
      hex(0) +
      hex(1) +
      hex(0) +
      hex(data.length) +
      hex(0) +
      hex(0) +
      hex(e.rdev?.[0] ?? 0) +
      hex(e.rdev?.[1] ?? 0) +
      hex(name.length) +
      hex(0);
    parts.push(Buffer.from(header), name, pad4(110 + name.length), data, pad4(data.length));
  };
  for (const e of entries) add(e);
  add({ name: "TRAILER!!!", mode: 0 });
  return Buffer.concat(parts);
}

export function buildSci(outFile: string): void {
  mkdirSync(dirname(outFile), { recursive: true });
  sh("gcc", ["-static", "-Os", "-s", "-Wall", "-o", outFile, SCI_SOURCE]);
}

function copyWithLibs(program: string, root: string): void {
  const target = join(root, program);
  mkdirSync(dirname(target), { recursive: true });
  copyFileSync(program, target);
  chmodSync(target, 0o755);
  const ldd = sh("ldd", [program]);
  for (const line of ldd.split("\n")) {
    const m = /(\/\S+)\s+\(0x/.exec(line);
    if (!m?.[1]) continue;
    const lib = m[1];
    const dest = join(root, lib);
    mkdirSync(dirname(dest), { recursive: true });
    if (!existsSync(dest)) copyFileSync(lib, dest);
  }
}

function rootfsTree(dir: string, sci: string): void {
  for (const d of ["bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "root", "etc", "var"])
    mkdirSync(join(dir, d), { recursive: true });
  mkdirSync(join(dir, "tmp"), { recursive: true, mode: 0o1777 });
  chmodSync(join(dir, "tmp"), 0o1777);
  copyFileSync("/bin/busybox", join(dir, "bin", "busybox"));
  chmodSync(join(dir, "bin", "busybox"), 0o755);
  const applets = execFileSync("/bin/busybox", ["--list"], { encoding: "utf8" }).split("\n").filter(Boolean);
  for (const a of applets) {
    if (a !== "busybox" && !existsSync(join(dir, "bin", a))) symlinkSync("busybox", join(dir, "bin", a));
  }
  copyWithLibs("/bin/bash", dir);
  copyFileSync(sci, join(dir, "usr", "sbin", "sci"));
  chmodSync(join(dir, "usr", "sbin", "sci"), 0o755);
  writeFileSync(join(dir, "etc", "passwd"), "root:x:0:0:root:/root:/bin/sh\n");
  writeFileSync(join(dir, "etc", "group"), "root:x:0:\n");
  writeFileSync(join(dir, "etc", "os-release"), 'NAME="EOS test guest"\nID=eos-kis-test\n');
  for (const [path, content] of Object.entries(TEST_PROGRAMS)) {
    const full = join(dir, path);
    mkdirSync(dirname(full), { recursive: true });
    writeFileSync(full, content);
    chmodSync(full, 0o755);
  }
}

function fileSha256(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

/** Builds (or reuses) the test KIS image. */
export function buildKisImage(name = "eos-kis-test"): KisImage {
  const kernelPkg = debianKernel();
  const key = createHash("sha256")
    .update(RECIPE)
    .update(readFileSync(SCI_SOURCE))
    .update(kernelPkg.version)
    .update(JSON.stringify(TEST_PROGRAMS))
    .update(String(statSync("/bin/busybox").size))
    .update(String(statSync("/bin/bash").size))
    .update(name)
    .digest("hex")
    .slice(0, 16);
  const dir = join(KIS_CACHE, key);
  const image: KisImage = {
    dir,
    kernel: join(dir, `${name}.kernel`),
    initrd: join(dir, `${name}.initrd`),
    rootfs: join(dir, `${name}.ext4`),
    tarball: join(dir, `${name}.x86_64.tar.xz`),
    kernelVersion: kernelPkg.version,
  };
  if (existsSync(join(dir, "done"))) return image;
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(join(tmp, "kis"), { recursive: true });
  const sci = join(tmp, "sci");
  buildSci(sci);

  // kernel + initrd
  const kroot = kernelPkg.root;
  const vmlinuz = readdirSync(join(kroot, "boot")).find((f) => f.startsWith("vmlinuz-"));
  if (!vmlinuz) throw new Error("no vmlinuz in the kernel package");
  copyFileSync(join(kroot, "boot", vmlinuz), join(tmp, "kis", `${name}.kernel`));
  const modDir = join(kroot, "lib", "modules", kernelPkg.version);
  const mods = moduleOrder(modDir, GUEST_MODULES);
  const entries: CpioEntry[] = [
    { name: "dev", mode: 0o40755 },
    { name: "dev/console", mode: 0o20600, rdev: [5, 1] },
    { name: "proc", mode: 0o40755 },
    { name: "sys", mode: 0o40755 },
    { name: "lib", mode: 0o40755 },
    { name: "lib/modules", mode: 0o40755 },
    { name: "lib/modules/sci", mode: 0o40755 },
    { name: "init", mode: 0o100755, data: readFileSync(sci) },
  ];
  for (const m of mods)
    entries.push({ name: `lib/modules/sci/${basename(m)}`, mode: 0o100644, data: readFileSync(m) });
  entries.push({
    name: "lib/modules/sci.order",
    mode: 0o100644,
    data: Buffer.from(mods.map((m) => `/lib/modules/sci/${basename(m)}\n`).join("")),
  });
  writeFileSync(join(tmp, "kis", `${name}.initrd`), gzipSync(cpio(entries), { level: 6 }));

  // rootfs
  const tree = join(tmp, "tree");
  rootfsTree(tree, sci);
  sh("mke2fs", [
    "-q",
    "-F",
    "-t",
    "ext4",
    "-L",
    "kisroot",
    "-d",
    tree,
    "-E",
    "root_owner=0:0",
    join(tmp, "kis", `${name}.ext4`),
    "48M",
  ]);
  rmSync(tree, { recursive: true, force: true });

  // sha256 + tarball
  const files = [`${name}.ext4`, `${name}.kernel`, `${name}.initrd`];
  writeFileSync(
    join(tmp, "kis", `${name}.sha256`),
    files.map((f) => `${fileSha256(join(tmp, "kis", f))}  ${f}\n`).join(""),
  );
  sh("tar", ["-C", join(tmp, "kis"), "-cJf", join(tmp, basename(image.tarball)), ...files, `${name}.sha256`]);
  for (const f of files) renameSync(join(tmp, "kis", f), join(tmp, f));
  rmSync(join(tmp, "kis"), { recursive: true, force: true });
  writeFileSync(join(tmp, "done"), `${new Date().toISOString()}\n`);
  rmSync(dir, { recursive: true, force: true });
  renameSync(tmp, dir);
  // Images of older inputs are not needed any more.
  for (const entry of readdirSync(KIS_CACHE)) {
    if (/^[0-9a-f]{16}$/.test(entry) && entry !== key)
      rmSync(join(KIS_CACHE, entry), { recursive: true, force: true });
  }
  return image;
}

/** A KIS tarball (tar.xz) of the given members (bad-input tests). */
export function makeKisTarball(out: string, members: Record<string, Buffer | string>): string {
  const dir = `${out}.d`;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  for (const [name, content] of Object.entries(members)) writeFileSync(join(dir, name), content);
  sh("tar", ["-C", dir, "-cJf", out, ...Object.keys(members)]);
  rmSync(dir, { recursive: true, force: true });
  return out;
}
