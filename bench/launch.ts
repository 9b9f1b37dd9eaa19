/**
 * bench/launch: what a flake costs over podman itself.
 *
 *   node --import tsx bench/launch.ts [--runs N]
 *
 * Builds a busybox image in an isolated podman storage, registers flakes for
 * /bin/true (a plain one and a delta one on a base), and times, interleaved
 * in the same run: the flake, and `podman run --rm IMAGE /bin/true` (the
 * baseline). Prints the medians, the ratio, and the podman processes per
 * launch counted by a PATH shim outside the pilot. Target: overhead <= 15 %,
 * one podman process per non-resume launch.
 */
import { spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createPodmanFixture, importImage, podmanSkipReason } from "../test/helpers/podman-fixture.ts";

const runsArg = process.argv.indexOf("--runs");
const RUNS = runsArg > 0 ? Number(process.argv[runsArg + 1]) : 25;

const reason = podmanSkipReason();
if (reason) {
  console.log(`bench/launch: skipped: ${reason}`);
  process.exit(0);
}

function median(values: number[]): number {
  const v = [...values].sort((a, b) => a - b);
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? (v[mid] ?? 0) : ((v[mid - 1] ?? 0) + (v[mid] ?? 0)) / 2;
}

function timed(cmd: string, args: string[], env: NodeJS.ProcessEnv): number {
  const start = performance.now();
  const r = spawnSync(cmd, args, { env, stdio: ["ignore", "ignore", "pipe"] });
  const ms = performance.now() - start;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: exit ${r.status}: ${r.stderr?.toString()}`);
  return ms;
}

const fx = await createPodmanFixture("eos-flake-bench-");
try {
  const image = "localhost/bench-busybox";
  importImage(fx, image, {}, true);
  importImage(fx, "localhost/bench-delta", { "/usr/bin/app-true": "#!/bin/sh\nexec /bin/true\n" });

  // NODE_EXTRA_CA_CERTS makes node parse a CA bundle before running any code
  // (~45 ms on this machine). A device does not set it; this sandbox does.
  const extraCa = process.env.NODE_EXTRA_CA_CERTS;
  const env = { ...fx.env };
  delete env.NODE_EXTRA_CA_CERTS;
  const podmanEnv = { ...fx.podmanEnv };
  delete podmanEnv.NODE_EXTRA_CA_CERTS;

  const reg = (args: string[]) => {
    const r = spawnSync(fx.flakeCtl, ["podman", "register", ...args], { env, encoding: "utf8" });
    if (r.status !== 0) throw new Error(`register: ${r.stderr}`);
  };
  const plain = join(fx.flakesDir, "bin", "true-flake");
  const delta = join(fx.flakesDir, "bin", "delta-true");
  reg(["--container", image, "--app", plain, "--target", "/bin/true"]);
  reg([
    "--container",
    "localhost/bench-delta",
    "--base",
    image,
    "--app",
    delta,
    "--target",
    "/usr/bin/app-true",
  ]);

  const cases: Record<string, [string, string[], NodeJS.ProcessEnv]> = {
    baseline: ["podman", ["run", "--rm", image, "/bin/true"], podmanEnv],
    flake: [plain, [], env],
    "delta flake": [delta, [], env],
  };
  if (extraCa)
    cases["flake (NODE_EXTRA_CA_CERTS kept)"] = [plain, [], { ...env, NODE_EXTRA_CA_CERTS: extraCa }];

  // Warm up (the delta flake's first launch builds its provisioned image).
  for (const [cmd, args, e] of Object.values(cases)) for (let i = 0; i < 2; i++) timed(cmd, args, e);
  // The delta flake runs a provisioned image (base + delta); its fair baseline is podman on that image.
  const record = JSON.parse(
    readFileSync(join(fx.idsDir, String(process.getuid?.() ?? 0), "delta-true.image.json"), "utf8"),
  ) as { image: string };
  cases["delta baseline"] = ["podman", ["run", "--rm", record.image, "/usr/bin/app-true"], podmanEnv];
  timed(...(cases["delta baseline"] as [string, string[], NodeJS.ProcessEnv]));
  const times: Record<string, number[]> = Object.fromEntries(Object.keys(cases).map((k) => [k, []]));
  for (let i = 0; i < RUNS; i++) {
    for (const [name, [cmd, args, e]] of Object.entries(cases)) times[name]?.push(timed(cmd, args, e));
  }

  // Podman processes per launch, counted by a shim in PATH (not by the pilot).
  const shimDir = join(fx.dir, "shim");
  mkdirSync(shimDir, { recursive: true });
  const log = join(fx.dir, "calls.log");
  writeFileSync(join(shimDir, "podman"), `#!/bin/sh\necho "$1" >> '${log}'\nexec /usr/bin/podman "$@"\n`);
  chmodSync(join(shimDir, "podman"), 0o755);
  const count = (app: string, n: number) => {
    writeFileSync(log, "");
    for (let i = 0; i < n; i++)
      timed(app, [], { ...env, PATH: `${shimDir}:${process.env.PATH ?? "/usr/bin:/bin"}` });
    const lines = readFileSync(log, "utf8").trim().split("\n").filter(Boolean);
    return { perLaunch: lines.length / n, commands: [...new Set(lines)].join(",") };
  };
  const plainCount = count(plain, 5);
  const deltaCount = count(delta, 5);

  // The pilot's own cost, less exposed to podman's variance: the flake with a
  // `podman` that exits at once, minus that no-op podman started directly.
  const noopDir = join(fx.dir, "noop");
  mkdirSync(noopDir, { recursive: true });
  writeFileSync(join(noopDir, "podman"), "#!/bin/sh\nexit 0\n");
  chmodSync(join(noopDir, "podman"), 0o755);
  const noopEnv = { ...env, PATH: `${noopDir}:${process.env.PATH ?? "/usr/bin:/bin"}` };
  const own: number[] = [];
  const noop: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    own.push(timed(plain, [], noopEnv));
    noop.push(timed(join(noopDir, "podman"), [], noopEnv));
  }
  const bareNode: number[] = [];
  for (let i = 0; i < RUNS; i++) bareNode.push(timed(process.execPath, ["-e", "0"], env));

  const base = median(times.baseline ?? []);
  const deltaBase = median(times["delta baseline"] ?? []);
  console.log(`bench/launch: ${RUNS} interleaved runs each, median wall time (ms)`);
  console.log(`  baseline        podman run --rm ${image} /bin/true: ${base.toFixed(1)}`);
  console.log(`  delta baseline  podman run --rm ${record.image} /usr/bin/app-true: ${deltaBase.toFixed(1)}`);
  for (const name of Object.keys(cases)) {
    if (name.endsWith("baseline")) continue;
    const m = median(times[name] ?? []);
    const base = name === "delta flake" ? deltaBase : median(times.baseline ?? []);
    const overhead = ((m / base - 1) * 100).toFixed(1);
    console.log(
      `  ${name.padEnd(34)} ${m.toFixed(1)}  ratio ${(m / base).toFixed(3)}  overhead ${overhead} %`,
    );
  }
  console.log(
    `pilot's own cost: ${(median(own) - median(noop)).toFixed(1)} ms per launch (flake with a no-op podman minus that podman;` +
      ` a bare \`node -e 0\` here: ${median(bareNode).toFixed(1)} ms)`,
  );
  console.log(`podman processes per launch: flake ${plainCount.perLaunch} (${plainCount.commands}),`);
  console.log(
    `  delta flake ${deltaCount.perLaunch} (${deltaCount.commands}) [target: 1 per non-resume launch]`,
  );
  console.log(`target: overhead <= 15 % over the baseline`);
  if (extraCa) {
    console.log(
      "note: NODE_EXTRA_CA_CERTS is set in this environment; node parses that CA bundle at start-up.\n" +
        "      The flake rows run without it (as on a device), except the row that says it kept it.",
    );
  }
} finally {
  fx.cleanup();
}
