/**
 * bench/fleet: N simulated devices checking and reporting at a fixed rate
 * against a real `os-update-server serve` over loopback, on SQLite and on
 * PostgreSQL (started as the integration tests start it). A check is what
 * `os-update --check` sends: GET manifest.json, GET manifest.json.sig, then
 * POST /v1/events with its `checked` report. A rollout of the image is
 * running (every check resolves the device's assigned version, every report
 * may judge the wave), as in the case the control plane exists for.
 *
 * Beside each case, the same server answers the same number of requests per
 * second on GET /health (its cheapest handler): latency and CPU are printed
 * as ratios to it. The generator is one process with a keep-alive agent; it
 * says when it, not the server, was the bottleneck (its timer ran late or it
 * used most of a core).
 *
 * Devices enrol first (POST /v1/enrol with the fleet key) and use their own
 * tokens, as os-update does; --legacy-tokens gives each a token file in the
 * tokens directory instead (`token add DEVICE`).
 *
 * On PostgreSQL each fleet size also runs on two replicas (two `serve`
 * processes on one database, device i asking replica i mod 2, as devices
 * with update.mirrors do), printed as ratios to one replica in the same run;
 * CPU and RSS are then the two processes' sum. Each case's "cores" line
 * says what shared the machine's cores meanwhile: each replica, PostgreSQL's
 * processes, the generator, the whole machine (other jobs included, in % of
 * one core), and how long the servers' event loops waited for a CPU.
 *
 * Last, the stream a device downloads: the root stream (64 MiB) from `serve`
 * on `storage: s3://…` (s3rver on loopback) against the same server on the
 * image directory, N concurrent full downloads (bench/s3.ts's case;
 * `--stream 0` leaves it out).
 *
 *   node --import tsx bench/fleet.ts [--devices 1000,10000] [--interval 60]
 *     [--duration 20] [--db sqlite,postgres] [--sockets 32] [--no-rollout] [--legacy-tokens]
 *     [--replicas 1,2] [--stream 10]
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream } from "node:fs";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { Agent, request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import pgClient from "pg";
import {
  cpuSeconds,
  machineBusySeconds,
  parentOf,
  runQueueWait,
  sampleRss,
  treeCpuSeconds,
} from "./proc-stats.ts";
import { DIST, runEos, waitForLog } from "../test/helpers/run.ts";
import { startPostgres, type Postgres } from "../test/helpers/postgres.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../test/helpers/server-world.ts";
import { streamBench, streamHeader, streamLine } from "./s3.ts";

const { values: args } = parseArgs({
  options: {
    devices: { type: "string", default: "1000,10000" },
    interval: { type: "string", default: "60" },
    duration: { type: "string", default: "20" },
    db: { type: "string", default: "sqlite,postgres" },
    sockets: { type: "string", default: "32" },
    "no-rollout": { type: "boolean", default: false },
    "legacy-tokens": { type: "boolean", default: false },
    replicas: { type: "string", default: "1,2" },
    stream: { type: "string", default: "10" },
  },
});
const DEVICES = args.devices.split(",").map(Number);
const INTERVAL_S = Number(args.interval);
const DURATION_S = Number(args.duration);
const DBS = args.db.split(",") as Array<"sqlite" | "postgres">;
const SOCKETS = Number(args.sockets);
const REPLICAS = args.replicas.split(",").map(Number);
const STREAM_CLIENTS = args.stream
  .split(",")
  .map(Number)
  .filter((n) => n > 0);
const NAME = "EOS.bench";
const TICK_MS = 5;
/** PostgreSQL's postmaster, whose tree's CPU is printed beside the servers' (it shares the 2 cores). */
let postmaster: number | undefined;

interface Sample {
  latencies: number[];
  errors: number;
  statuses: Map<number, number>;
}

function send(
  agent: Agent,
  url: string,
  method: string,
  headers: Record<string, string>,
  body?: string,
): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, agent, headers }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
      res.on("error", reject);
    });
    req.setTimeout(30_000, () => req.destroy(new Error("timed out")));
    req.on("error", reject);
    req.end(body);
  });
}

/** POST with a bearer token; the answer's body (the enrolment's token). */
function post(agent: Agent, url: string, token: string, body: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
    const req = request(url, { method: "POST", agent, headers }, (res) => {
      let text = "";
      res.setEncoding("utf8").on("data", (s: string) => (text += s));
      res.on("end", () =>
        res.statusCode === 201 ? resolve(text) : reject(new Error(`${url}: HTTP ${res.statusCode}`)),
      );
    });
    req.on("error", reject);
    req.end(body);
  });
}

const pct = (sorted: number[], p: number) =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;

/** A device's `checked` report, as os-update sends it. */
function checkedBody(sha256: string): string {
  return JSON.stringify({
    device: { image: NAME, architecture: "x86_64", running: "A", slots: { A: "1", B: null } },
    events: [
      {
        type: "checked",
        id: randomBytes(9).toString("base64url"),
        time: new Date().toISOString(),
        version: "1",
        slot: "A",
        sha256,
        offered: "2",
        available: true,
      },
    ],
  });
}

/**
 * Runs `checksPerSecond` checks a second for DURATION_S, open loop: a slow
 * answer does not slow the schedule down. `one(i)` runs check number i and
 * records its requests' latencies.
 */
async function drive(
  checksPerSecond: number,
  /** The server processes (replicas): CPU and RSS are their sum. */
  pids: number[],
  one: (i: number, sample: Sample) => Promise<void>,
) {
  const sample: Sample = { latencies: [], errors: 0, statuses: new Map() };
  const cpuEach = () => Promise.all(pids.map(cpuSeconds));
  const cpuOf = async () => (await cpuEach()).reduce((a, b) => a + b, 0);
  const pgCpu = async () => (postmaster === undefined ? 0 : treeCpuSeconds(postmaster).catch(() => 0));
  const each0 = await cpuEach();
  const cpu0 = each0.reduce((a, b) => a + b, 0);
  const pg0 = await pgCpu();
  const waitOf = async () => (await Promise.all(pids.map(runQueueWait))).reduce((a, b) => a + b, 0);
  const wait0 = await waitOf();
  const busy0 = await machineBusySeconds();
  const gen0 = process.cpuUsage();
  const rss = pids.map((pid) => sampleRss(pid, 250));
  const start = performance.now();
  const total = Math.round(checksPerSecond * DURATION_S);
  let issued = 0;
  let maxLag = 0;
  const inflight = new Set<Promise<void>>();
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      const elapsed = performance.now() - start;
      const due = Math.min(total, Math.floor((elapsed / 1000) * checksPerSecond));
      if (due > issued) maxLag = Math.max(maxLag, elapsed - (issued / checksPerSecond) * 1000);
      for (; issued < due; issued++) {
        const p = one(issued, sample).catch(() => void sample.errors++);
        inflight.add(p);
        void p.finally(() => inflight.delete(p));
      }
      if (issued >= total) {
        clearInterval(timer);
        resolve();
      }
    }, TICK_MS);
  });
  await Promise.all(inflight);
  const seconds = (performance.now() - start) / 1000;
  const gen = process.cpuUsage(gen0);
  const each = (await cpuEach()).map((c, k) => (c - (each0[k] ?? 0)) / seconds);
  const pgShare = ((await pgCpu()) - pg0) / seconds;
  const waited = (await waitOf()) - wait0;
  const busy = ((await machineBusySeconds()) - busy0) / seconds;
  const sorted = [...sample.latencies].sort((a, b) => a - b);
  return {
    requests: sample.latencies.length,
    errors: sample.errors,
    statuses: sample.statuses,
    rps: sample.latencies.length / seconds,
    p50: pct(sorted, 0.5),
    p99: pct(sorted, 0.99),
    cpu: ((await cpuOf()) - cpu0) / seconds,
    rss: (await Promise.all(rss.map((r) => r.stop()))).reduce((a, b) => a + b, 0),
    seconds,
    generatorCpu: (gen.user + gen.system) / 1e6 / seconds,
    /** Each replica's share of a core, and PostgreSQL's processes' together. */
    each,
    pgShare,
    /** The servers' event loops' time waiting for a CPU, ms per request. */
    runQueueMs: (waited * 1000) / Math.max(sample.latencies.length, 1),
    /** Cores the whole machine was busy, other jobs included. */
    busy,
    maxLagMs: maxLag,
    load: (await readFile("/proc/loadavg", "utf8")).split(" ")[0],
  };
}

async function timed(sample: Sample, run: () => Promise<number>): Promise<void> {
  const t = performance.now();
  const status = await run();
  sample.latencies.push(performance.now() - t);
  sample.statuses.set(status, (sample.statuses.get(status) ?? 0) + 1);
  if (status >= 400) sample.errors++;
}

/** Bearer tokens for N devices, in the server's tokens directory (stored as their sha256, as `token add` does). */
async function deviceTokens(dir: string, n: number): Promise<string[]> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tokens: string[] = [];
  for (let i = 0; i < n; i++) {
    const token = randomBytes(32).toString("base64url");
    const hash = createHash("sha256").update(token).digest("hex");
    await writeFile(join(dir, `dev-${String(i).padStart(5, "0")}`), `${hash}\n`, { mode: 0o600 });
    tokens.push(token);
  }
  return tokens;
}

async function runCase(
  world: World,
  db: "sqlite" | "postgres",
  n: number,
  pg: Postgres | undefined,
  replicas: number,
) {
  const work = await mkdtemp(join(tmpdir(), "eos-bench-fleet-"));
  const children: ChildProcess[] = [];
  try {
    const database = db === "postgres" ? `database: ${await pg!.freshDatabase()}\n` : "";
    const config = join(work, "os-update.yml");
    // The whole fleet enrols at once from one address: past the default enrolment limits, which are not measured here.
    const limits =
      "serve:\n  enrol_limit:\n    per_address: { burst: 100000, per_minute: 1000000 }\n" +
      "    per_key: { burst: 100000, per_minute: 1000000 }\n";
    await writeFile(config, `${await readFile(world.config, "utf8")}${database}${limits}`);
    const tokensDir = join(work, "tokens");
    const tokens = args["legacy-tokens"] ? await deviceTokens(tokensDir, n) : [];
    const key = await runEos("os-update-server", [
      "token",
      "add",
      "fleet",
      "--enrolment",
      "--tokens-dir",
      tokensDir,
    ]);
    if (key.code !== 0) throw new Error(key.stderr);
    const stateDir = join(work, "state");
    const ops = await runEos("os-update-server", [
      "admin-token",
      "add",
      "bench",
      "--role",
      "operator",
      "--config",
      config,
      "--state-dir",
      stateDir,
    ]);
    if (ops.code !== 0) throw new Error(ops.stderr);
    const urls: string[] = [];
    const pids: number[] = [];
    for (let k = 0; k < replicas; k++) {
      const server = spawn(process.execPath, [
        // e.g. BENCH_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" to see where the server spends its time
        ...(process.env.BENCH_NODE_ARGS ? process.env.BENCH_NODE_ARGS.split(" ") : []),
        join(DIST, "os-update-server.mjs"),
        "serve",
        "--config",
        config,
        "--listen",
        "127.0.0.1",
        "--port",
        "0",
        "--tokens-dir",
        join(work, "tokens"),
        "--state-dir",
        stateDir,
      ]);
      children.push(server);
      urls.push(String((await waitForLog(server, "listening")).url));
      // e.g. BENCH_SERVER_LOG=/tmp/fleet-log: each replica's request log (server-side ms) in /tmp/fleet-log.K
      if (process.env.BENCH_SERVER_LOG)
        server.stdout?.pipe(createWriteStream(`${process.env.BENCH_SERVER_LOG}.${k}`, { flags: "a" }));
      else server.stdout?.resume();
      server.stderr?.resume();
      pids.push(server.pid as number);
    }
    const url = urls[0] as string;
    /** Device i asks replica i mod R, as a device whose update.url is that one. */
    const at = (i: number) => urls[i % urls.length] as string;
    const agent = new Agent({ keepAlive: true, maxSockets: SOCKETS });
    const auth = (i: number) => ({ authorization: `Bearer ${tokens[i % n]}` });
    const running = "0".repeat(64);
    const report = (i: number) =>
      send(
        agent,
        `${at(i)}/v1/events`,
        "POST",
        { ...auth(i), "content-type": "application/json" },
        checkedBody(running),
      );
    const enrol = async () => {
      const body = await post(agent, `${url}/v1/enrol`, key.stdout.toString().trim(), "{}");
      tokens.push((JSON.parse(body) as { token: string }).token);
    };
    // Every device has enrolled and reported once: the inventory holds the whole fleet, as in steady state.
    for (let i = 0; i < n; i += SOCKETS) {
      const batch = Array.from({ length: Math.min(SOCKETS, n - i) }, (_, k) => i + k);
      if (!args["legacy-tokens"]) await Promise.all(batch.map(enrol));
      await Promise.all(batch.map(report));
    }
    if (!args["no-rollout"]) {
      const r = await send(
        agent,
        `${url}/v1/admin/rollouts`,
        "POST",
        { authorization: `Bearer ${ops.stdout.toString().trim()}`, "content-type": "application/json" },
        JSON.stringify({
          image: NAME,
          version: "2",
          waves: "10%,50%,100%",
          soak_seconds: 3600,
          error_threshold: 0.5,
          success_threshold: 0.9,
        }),
      );
      if (r !== 201 && r !== 200) throw new Error(`rollout create: HTTP ${r}`);
    }
    const rate = n / INTERVAL_S;
    const images = (i: number) => `${at(i)}/v1/images/${NAME}`;
    const fleet = await drive(rate, pids, async (i, s) => {
      await timed(s, () => send(agent, `${images(i)}/manifest.json`, "GET", auth(i)));
      await timed(s, () => send(agent, `${images(i)}/manifest.json.sig`, "GET", auth(i)));
      await timed(s, () => report(i));
    });
    // The baseline: as many requests a second, each on /health, three in a row per "check".
    const health = await drive(rate, pids, async (i, s) => {
      for (let k = 0; k < 3; k++) await timed(s, () => send(agent, `${at(i)}/health`, "GET", {}));
    });
    agent.destroy();
    return { fleet, health };
  } finally {
    for (const c of children) c.kill("SIGTERM");
    await new Promise((r) => setTimeout(r, 300));
    await rm(work, { recursive: true, force: true });
  }
}

type Result = Awaited<ReturnType<typeof drive>>;

function line(label: string, r: Result): string {
  const errs = r.errors
    ? `  errors ${r.errors} (${[...r.statuses].map(([k, v]) => `${k}:${v}`).join(" ")})`
    : "";
  const perRequest = ((r.cpu * r.seconds * 1000) / Math.max(r.requests, 1)).toFixed(2);
  return `  ${label.padEnd(8)} ${r.rps.toFixed(0).padStart(6)} req/s  cpu ${perRequest.padStart(5)} ms/req  p50 ${r.p50.toFixed(2).padStart(6)} ms  p99 ${r.p99.toFixed(2).padStart(7)} ms  cpu ${(r.cpu * 100).toFixed(0).padStart(3)}% of a core  rss ${(r.rss / 2 ** 20).toFixed(0)} MiB${errs}\n${" ".repeat(11)}cores: ${r.each.length > 1 ? `replicas ${r.each.map((c) => `${(c * 100).toFixed(0)}%`).join(" + ")}, ` : ""}postgres ${(r.pgShare * 100).toFixed(0)}%, generator ${(r.generatorCpu * 100).toFixed(0)}%; the machine ${(r.busy * 100).toFixed(0)}% (load ${r.load}); servers waited for a CPU ${r.runQueueMs.toFixed(2)} ms/req`;
}

function generatorNote(r: Result): string | undefined {
  // The schedule ran behind: latencies include the generator's (or the machine's) own waiting.
  if (r.generatorCpu > 0.8)
    return `  ! the load generator was the bottleneck (${(r.generatorCpu * 100).toFixed(0)}% of a core, its timer up to ${r.maxLagMs.toFixed(0)} ms late)`;
  if (r.maxLagMs > 50)
    return `  ! the load generator's timer ran up to ${r.maxLagMs.toFixed(0)} ms late on ${(r.generatorCpu * 100).toFixed(0)}% of a core: the machine is busy (load ${r.load}), latencies include its waiting; cpu ms/req does not`;
  return undefined;
}

async function main() {
  const world = await makeWorld();
  let pg: Postgres | undefined;
  try {
    await writeServerConfig(world, [{ image: `${world.origin.url}/${NAME}.raw.xz`, name: NAME }]);
    for (const version of ["1", "2"]) {
      await releaseImage(world, NAME, version, { payloadBytes: 256 * 1024, rootSizeMiB: 4 });
      const fetched = await runEos("os-update-server", ["fetch", "--config", world.config]);
      if (fetched.code !== 0) throw new Error(fetched.stderr);
    }
    if (DBS.includes("postgres")) {
      const started = await startPostgres();
      if ("unavailable" in started) console.log(`postgres skipped: ${started.unavailable}`);
      else {
        pg = started;
        const client = new pgClient.Client({ connectionString: await pg.freshDatabase() });
        await client.connect();
        const { rows } = await client.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
        postmaster = await parentOf(Number(rows[0]?.pid));
        await client.end();
      }
    }
    console.log(
      `bench/fleet: each device checks every ${INTERVAL_S} s (manifest, signature, checked report), ${DURATION_S} s per case, loopback HTTP, ${SOCKETS} keep-alive sockets; ${args["no-rollout"] ? "no rollout" : "a rollout running"}`,
    );
    console.log("baseline: GET /health on the same server at the same request rate, right after");
    for (const db of DBS) {
      if (db === "postgres" && !pg) continue;
      for (const n of DEVICES) {
        // SQLite is one host's database: replicas are a PostgreSQL case.
        let one: Result | undefined;
        for (const replicas of db === "postgres" ? REPLICAS : [1]) {
          const { fleet, health } = await runCase(world, db, n, pg, replicas);
          const label = replicas === 1 ? "" : `, ${replicas} replicas`;
          console.log(`${db}, ${n} devices (${(n / INTERVAL_S).toFixed(0)} checks/s)${label}:`);
          console.log(line("fleet", fleet));
          console.log(line("/health", health));
          console.log(
            `  ratio    cpu/req ×${(fleet.cpu / fleet.rps / Math.max(health.cpu / health.rps, 1e-6)).toFixed(1)}  p50 ×${(fleet.p50 / health.p50).toFixed(1)}  p99 ×${(fleet.p99 / health.p99).toFixed(1)}  cpu ×${(fleet.cpu / Math.max(health.cpu, 0.001)).toFixed(1)}   target p99 < 50 ms: ${fleet.p99 < 50 ? "met" : "MISSED"}`,
          );
          if (replicas === 1) one = fleet;
          else if (one)
            console.log(
              `  vs 1 replica  cpu/req ×${(fleet.cpu / fleet.rps / Math.max(one.cpu / one.rps, 1e-6)).toFixed(2)}  p50 ×${(fleet.p50 / one.p50).toFixed(2)}  p99 ×${(fleet.p99 / one.p99).toFixed(2)}  rss ×${(fleet.rss / one.rss).toFixed(2)}`,
            );
          for (const note of [generatorNote(fleet), generatorNote(health)]) if (note) console.log(note);
        }
      }
    }
  } finally {
    await pg?.stop();
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  }
  if (STREAM_CLIENTS.length) {
    console.log(
      `stream: the root stream (64 MiB), ${STREAM_CLIENTS.join("/")} concurrent full downloads, median of 3`,
    );
    console.log(streamHeader);
    await streamBench(STREAM_CLIENTS, (r) => console.log(streamLine(r)));
  }
}

await main();
