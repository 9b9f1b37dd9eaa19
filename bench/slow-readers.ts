/**
 * bench/slow-readers: the update server's memory and a normal client's rate
 * while many devices read slowly (each takes one chunk every two seconds,
 * enough not to count as stalled). Printed beside the baseline of the same
 * run: the normal client's rate with no slow readers attached.
 *
 *   node --import tsx bench/slow-readers.ts [READERS]   (default 1000)
 *
 * Figures: server RSS before, with the readers attached (peak), what each
 * reader added, and how long after they leave it is back under 100 MiB
 * (sampled for 60 s). The server runs with the environment that
 * systemd/os-update-server.service gives it. `--tls`: every client
 * (readers and the normal one) over HTTPS with a device token, as devices
 * connect in the field.
 */
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { runEos } from "../test/helpers/run.ts";
import { makeWorld, releaseImage, writeServerConfig } from "../test/helpers/server-world.ts";
import { makeTestCert, startServer } from "../test/helpers/serve.ts";

const args = process.argv.slice(2);
const tls = args.includes("--tls");
const readers = Number(args.find((a) => !a.startsWith("--")) ?? 1000);
const NAME = "EOS.x86_64-AB";
const MiB = 1024 * 1024;

async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? 0) / 1024;
}

/** The Environment= lines of the unit the server runs under in the field. */
async function unitEnvironment(): Promise<Record<string, string>> {
  const unit = await readFile(join(import.meta.dirname, "../systemd/os-update-server.service"), "utf8");
  const env: Record<string, string> = {};
  for (const m of unit.matchAll(/^Environment=([A-Z_]+)=(.*)$/gm)) env[m[1] as string] = m[2] as string;
  return env;
}

let client: { ca?: Buffer; headers?: Record<string, string> } = {};

function get(url: string): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const request = url.startsWith("https:") ? httpsRequest : httpRequest;
    const req = request(url, { agent: false, ...client }, resolve);
    req.on("error", reject);
    req.end();
  });
}

async function fullDownload(url: string): Promise<number> {
  const t = performance.now();
  const res = await get(url);
  let bytes = 0;
  for await (const c of res as AsyncIterable<Buffer>) bytes += c.length;
  return bytes / MiB / ((performance.now() - t) / 1000);
}

const world = await makeWorld();
try {
  await writeServerConfig(
    world,
    [{ image: `${world.origin.url}/${NAME}.raw.xz`, name: NAME }],
    `serve: {max_streams: ${readers + 16}, max_streams_per_device: ${readers + 16}}\n`,
  );
  await releaseImage(world, NAME, "1.0.0", { rootSizeMiB: 64, payloadBytes: 56 * MiB });
  if ((await runEos("os-update-server", ["fetch", "--config", world.config])).code !== 0)
    throw new Error("fetch");
  const unitEnv = await unitEnvironment();
  let tokensDir: string | undefined;
  let cert: Awaited<ReturnType<typeof makeTestCert>> | undefined;
  if (tls) {
    tokensDir = join(world.dir, "tokens");
    const added = await runEos("os-update-server", ["token", "add", "device-1", "--tokens-dir", tokensDir]);
    if (added.code !== 0) throw new Error(added.stderr);
    cert = await makeTestCert(world.dir);
    client = {
      ca: await readFile(cert.cert),
      headers: { authorization: `Bearer ${added.stdout.toString().trim()}` },
    };
  }
  const server = await startServer({
    config: world.config,
    ...(tokensDir ? { tokensDir } : {}),
    ...(cert ? { tls: cert } : {}),
    env: { ...process.env, ...unitEnv },
  });
  server.child.stdout?.resume();
  const pid = server.child.pid as number;
  const url = `${server.url}/v1/images/${NAME}/root`;
  try {
    await fullDownload(url); // warm the page cache
    const alone = await fullDownload(url);
    const before = await rssMiB(pid);
    const open: IncomingMessage[] = [];
    const timers: NodeJS.Timeout[] = [];
    for (let i = 0; i < readers; i++) {
      const res = await get(url);
      if (res.statusCode !== 200) throw new Error(`reader ${i}: HTTP ${res.statusCode}`);
      res.on("data", () => {
        res.pause();
        timers.push(setTimeout(() => res.resume(), 2000));
      });
      open.push(res);
    }
    let peak = await rssMiB(pid);
    const sampler = setInterval(async () => (peak = Math.max(peak, await rssMiB(pid).catch(() => 0))), 200);
    await new Promise((r) => setTimeout(r, 5000));
    const withReaders = await fullDownload(url);
    peak = Math.max(peak, await rssMiB(pid));
    clearInterval(sampler);
    for (const t of timers) clearTimeout(t);
    for (const res of open) res.destroy();
    const left = performance.now();
    let back: number | undefined;
    let last = 0;
    while (performance.now() - left < 60_000) {
      last = await rssMiB(pid);
      if (last < 100) {
        back = (performance.now() - left) / 1000;
        break;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
    console.log(
      `slow readers: ${readers}, root 64 MiB, ${tls ? "HTTPS with a device token" : "HTTP without auth"}; server env: ${Object.entries(
        unitEnv,
      )
        .map(([k, v]) => `${k}=${v}`)
        .join(" ")}`,
    );
    console.log(
      `server RSS: before ${before.toFixed(0)} MiB, peak with readers ${peak.toFixed(0)} MiB (target <= 150): ${(((peak - before) * 1024) / readers).toFixed(0)} KiB per reader`,
    );
    console.log(
      back === undefined
        ? `after they left: still ${last.toFixed(0)} MiB after 60 s (target < 100 within a minute)`
        : `after they left: under 100 MiB after ${back.toFixed(1)} s (${last.toFixed(0)} MiB)`,
    );
    console.log(
      `a normal client: ${withReaders.toFixed(0)} MiB/s with the readers, ${alone.toFixed(0)} MiB/s alone (baseline): ratio ${(withReaders / alone).toFixed(2)}`,
    );
  } finally {
    server.stop();
  }
} finally {
  await world.origin.close();
  await rm(world.dir, { recursive: true, force: true });
}
