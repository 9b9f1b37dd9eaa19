/**
 * bench/aarch64: the arm64 image next to the x86_64 one, built and booted on
 * this machine.
 *
 *   sudo npm run bench:aarch64 -- [--no-cache] [--out DIR] [--json]
 *
 * Builds images/default.yaml (x86_64) and images/aarch64.yaml (--arch
 * aarch64, emulated under qemu-user), both with a throw-away SSH key baked in,
 * prints each build's phases side by side (the base root from the root cache
 * unless --no-cache), then boots EOS.aarch64-AB.raw in qemu-system-aarch64
 * (-M virt, AAVMF, TCG unless the host is arm64) and prints the seconds to the
 * login prompt and to SSH, and what the guest says it is (uname -m, the
 * kernel command line, the root slot, /etc/eos/image). Not part of CI: a cold
 * arm64 build takes 20-40 min on 2 cores.
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { parse, stringify } from "yaml";
import { buildImage, type BuildResult } from "../src/io/image/build.ts";
import { Vm } from "../src/io/machine/qemu.ts";
import { consoleContext } from "../test/helpers/context.ts";
import { REPO } from "../test/helpers/vm-image.ts";
import { LOGIN_OR_SHELL } from "../src/core/machine/qemu-machine.ts";

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const OUT = resolve(arg("--out") ?? join(REPO, ".tmp/bench-aarch64"));
const NO_CACHE = process.argv.includes("--no-cache");
const JSON_OUT = process.argv.includes("--json");

if (process.getuid?.() !== 0) {
  console.log("bench/aarch64: needs root (eos build runs mmdebstrap --mode=root)");
  process.exit(1);
}
if (!existsSync("/proc/sys/fs/binfmt_misc/qemu-aarch64")) {
  console.log("bench/aarch64: no qemu-aarch64 binfmt handler: run scripts/setup.sh");
  process.exit(1);
}

await mkdir(OUT, { recursive: true });
const sshKey = join(OUT, "id_ed25519");
if (!existsSync(sshKey))
  spawnSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "eos-bench-aarch64", "-f", sshKey]);
const pub = (await readFile(`${sshKey}.pub`, "utf8")).trim();

async function description(file: string): Promise<string> {
  const desc = parse(await readFile(join(REPO, "images", file), "utf8")) as Record<string, unknown>;
  desc.files = ((desc.files as string[] | undefined) ?? []).map((f) => resolve(REPO, "images", f));
  desc.users = { root: { ssh_authorized_keys: [pub], autologin_serial: true } };
  const path = join(OUT, file);
  await writeFile(path, stringify(desc));
  return path;
}

const ctx = consoleContext();
const builds: Record<string, BuildResult & { wall: number }> = {};
for (const [arch, file] of [
  ["x86_64", "default.yaml"],
  ["aarch64", "aarch64.yaml"],
] as const) {
  const t0 = performance.now();
  const r = await buildImage(ctx, {
    description: await description(file),
    profile: "AB",
    architecture: arch,
    noCache: NO_CACHE,
    outDir: OUT,
    keys: [],
    noXz: true,
  });
  builds[arch] = { ...r, wall: Math.round((performance.now() - t0) / 100) / 10 };
}

const x86 = builds.x86_64 as BuildResult & { wall: number };
const arm = builds.aarch64 as BuildResult & { wall: number };
const phases = [...new Set([...Object.keys(x86.seconds), ...Object.keys(arm.seconds)])];
const rows = [
  ["phase", "x86_64 s", "aarch64 s"],
  ...phases.map((p) => [p, String(x86.seconds[p] ?? "-"), String(arm.seconds[p] ?? "-")]),
  ["total (wall)", String(x86.wall), String(arm.wall)],
  ["base root from the cache", String(x86.baseRootCached), String(arm.baseRootCached)],
  ["root file system MiB", (x86.rootFsBytes / 2 ** 20).toFixed(1), (arm.rootFsBytes / 2 ** 20).toFixed(1)],
  ["slot MiB", String(x86.rootSlotBytes / 2 ** 20), String(arm.rootSlotBytes / 2 ** 20)],
];

const work = join(OUT, "vm");
await rm(work, { recursive: true, force: true });
const vm = await Vm.start({
  image: arm.raw,
  architecture: "aarch64",
  workDir: work,
  sshKey,
  registryDiskBytes: 0,
  memoryMiB: 1024,
  cpus: 2,
});
let login = Number.NaN;
let ssh = Number.NaN;
let guest = "";
try {
  await vm.waitForConsole(LOGIN_OR_SHELL, { timeoutMs: 20 * 60_000 });
  login = Math.round(vm.uptime() * 10) / 10;
  await vm.waitForSsh({ timeoutMs: 20 * 60_000 });
  ssh = Math.round(vm.uptime() * 10) / 10;
  const r = await vm.ssh([
    "sh",
    "-c",
    "uname -m; cat /proc/cmdline; findmnt -no SOURCE,FSTYPE /media/root-ro; cat /etc/eos/image; node --version",
  ]);
  guest = r.stdout.trim();
  await vm.powerOff({ timeoutMs: 120_000 });
} finally {
  if (vm.running) await vm.kill();
}

if (JSON_OUT) {
  console.log(JSON.stringify({ builds, boot: { accel: vm.accel, login, ssh, guest } }, null, 2));
} else {
  const w = [0, 1, 2].map((c) => Math.max(...rows.map((r) => (r[c] ?? "").length)));
  for (const r of rows) console.log(r.map((cell, c) => (cell ?? "").padEnd(w[c] ?? 0)).join("  "));
  console.log(`\narm64 boot (${vm.accel}): login prompt ${login} s, SSH ${ssh} s after QEMU started`);
  console.log(guest);
  console.log(`console log: ${vm.consoleLog}`);
}
