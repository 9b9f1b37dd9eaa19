/**
 * bench/vm-launch: how long a VM flake takes from the call to its output.
 *
 *   node --import tsx bench/vm-launch.ts [--runs N]
 *
 * On the test KIS image (test/helpers/kis.ts) with the QEMU engine (TCG
 * unless EOS_QEMU_ACCEL=kvm), interleaved in the same run:
 *   cold     a plain flake (`mybash -c 'echo hi'`): boot, run, power off
 *   resumed  a resume flake's later calls (the VM is already up)
 *   baseline a bare `qemu-system-x86_64` boot of the same kernel and initrd
 *            with the same machine, memory and vCPUs, until the kernel is
 *            ready to start init (rdinit= names a missing program: the kernel
 *            panics there and, with panic=-1 and -no-reboot, QEMU exits)
 * Prints medians (time to the first output byte and to exit) and the ratios
 * to the baseline.
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bundleBin } from "../test/helpers/podman-fixture.ts";
import { buildKisImage, kisSkipReason } from "../test/helpers/kis.ts";

const runsArg = process.argv.indexOf("--runs");
const RUNS = runsArg > 0 ? Number(process.argv[runsArg + 1]) : 5;

const reason = kisSkipReason();
if (reason) {
  console.log(`bench/vm-launch: skipped: ${reason}`);
  process.exit(0);
}

function median(values: number[]): number {
  const v = [...values].sort((a, b) => a - b);
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? (v[mid] ?? 0) : ((v[mid - 1] ?? 0) + (v[mid] ?? 0)) / 2;
}

/** Runs a command; ms to its first stdout byte and to its exit. */
function timed(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ first: number; total: number }> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    let first = -1;
    let stderr = "";
    const child = spawn(cmd, args, { env, stdio: ["ignore", "pipe", "pipe"] });
    child.stdout.on("data", () => {
      if (first < 0) first = performance.now() - start;
    });
    child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
    child.on("error", reject);
    child.on("close", (code) => {
      const total = performance.now() - start;
      if (code !== 0) reject(new Error(`${cmd} ${args.join(" ")}: exit ${code}: ${stderr}`));
      else resolve({ first: first < 0 ? total : first, total });
    });
  });
}

const kis = buildKisImage();
const dir = mkdtempSync(join(tmpdir(), "eos-vm-bench-"));
try {
  const binDir = join(dir, "dist");
  mkdirSync(binDir);
  const pilot = await bundleBin("firecracker-pilot", binDir);
  const flakeCtl = await bundleBin("flake-ctl", binDir);
  writeFileSync(
    join(dir, "flakes.yml"),
    `generic:\n  flakes_dir: ${join(dir, "flakes")}\n  firecracker_ids_dir: ${join(dir, "ids")}\n  firecracker_pilot: ${pilot}\n`,
  );
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    FLAKES_CONFIG: join(dir, "flakes.yml"),
    EOS_FIRECRACKER_IMAGES_DIR: join(dir, "images"),
    EOS_FLAKES_CACHE_DIR: join(dir, "cache"),
    FLAKE_ALLOW_INSECURE_TRANSPORT: "1",
    EOS_QEMU_ACCEL: process.env.EOS_QEMU_ACCEL ?? "tcg",
  };
  delete env.PILOT_DEBUG;
  delete env.NODE_EXTRA_CA_CERTS; // a device does not set it; node parses the bundle at start-up
  const ctl = (args: string[]) => {
    const r = spawnSync(flakeCtl, args, { env, encoding: "utf8" });
    if (r.status !== 0) throw new Error(`flake-ctl ${args.join(" ")}: ${r.stderr}`);
  };
  ctl(["firecracker", "pull", "--name", "bench", "--kis-image", kis.tarball]);
  const cold = join(dir, "bin", "mybash");
  const resumed = join(dir, "bin", "resumed");
  ctl([
    "firecracker",
    "register",
    "--vm",
    "bench",
    "--app",
    cold,
    "--target",
    "/bin/bash",
    "--overlay-size",
    "20GiB",
    "--mem",
    "512",
    "--no-net",
  ]);
  ctl([
    "firecracker",
    "register",
    "--vm",
    "bench",
    "--app",
    resumed,
    "--target",
    "/bin/echo",
    "--resume",
    "--overlay-size",
    "1GiB",
    "--mem",
    "512",
    "--no-net",
  ]);

  const accel = env.EOS_QEMU_ACCEL as string;
  const bare = [
    "-machine",
    "q35",
    "-accel",
    accel,
    "-m",
    "512",
    "-smp",
    "2",
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-no-reboot",
    "-kernel",
    kis.kernel,
    "-initrd",
    kis.initrd,
    "-append",
    "console=ttyS0 quiet panic=-1 rdinit=/bench-no-init",
    "-serial",
    "null",
  ];
  // Bare boot: QEMU exits at the panic with status 0; its "output" is its exit.
  const baseline = () => timed("qemu-system-x86_64", bare, env);

  // warm-up (page cache, overlay template, the resume VM's first boot)
  await timed(cold, ["-c", "echo hi"], env);
  const firstResume = await timed(resumed, ["hi"], env);
  await baseline();

  const t: Record<string, Array<{ first: number; total: number }>> = { baseline: [], cold: [], resumed: [] };
  for (let i = 0; i < RUNS; i++) {
    t.baseline?.push(await baseline());
    t.cold?.push(await timed(cold, ["-c", "echo hi"], env));
    t.resumed?.push(await timed(resumed, ["hi"], env));
  }
  await timed(resumed, ["%remove"], env);

  const base = median((t.baseline ?? []).map((x) => x.total));
  const row = (name: string, what: string) => {
    const first = median((t[name] ?? []).map((x) => x.first));
    const total = median((t[name] ?? []).map((x) => x.total));
    console.log(
      `  ${name.padEnd(9)} ${what.padEnd(44)} output ${first.toFixed(0).padStart(5)} ms  exit ${total.toFixed(0).padStart(5)} ms  output/baseline ${(first / base).toFixed(2)}`,
    );
  };
  console.log(
    `bench/vm-launch: ${RUNS} interleaved runs each, median wall time, QEMU q35 ${accel}, 512 MiB, 2 vCPUs`,
  );
  console.log(
    `  baseline  bare qemu boot of the same kernel+initrd to init   exit ${base.toFixed(0).padStart(5)} ms`,
  );
  row("cold", "mybash -c 'echo hi' (boot, run, power off)");
  row("resumed", "resume flake, VM already running");
  console.log(
    `  (the resume flake's first call, which boots its VM: output ${firstResume.first.toFixed(0)} ms)`,
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
