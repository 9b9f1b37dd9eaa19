/**
 * bench/server: N concurrent root-stream downloads from `os-update-server
 * serve` on loopback, beside a baseline static file server (node:http piping
 * the same bytes from a plain file) in the same run. Prints aggregate
 * throughput, the ratio to the baseline, and each server's peak RSS.
 *
 *   node --import tsx bench/server.ts [N ...]     (default: 1 10 100)
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cpuSeconds, peakRss, sampleRss } from "./proc-stats.ts";
import { TokenStore } from "../src/io/server/tokens.ts";
import { DEFAULT_STREAM_LIMITS } from "../src/io/server/send-range.ts";
import { DIST, runEos, waitForLog } from "../test/helpers/run.ts";
import { partitionBytes } from "../test/helpers/sample-image.ts";
import { makeWorld, releaseImage, writeServerConfig } from "../test/helpers/server-world.ts";

const counts = process.argv
  .slice(2)
  .map(Number)
  .filter((n) => n > 0);
const Ns = counts.length ? counts : [1, 10, 100];

function download(url: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers, agent: false }, (res) => {
      let bytes = 0;
      res.on("data", (c: Buffer) => (bytes += c.length));
      res.on("end", () =>
        res.statusCode === 200 ? resolve(bytes) : reject(new Error(`HTTP ${res.statusCode}`)),
      );
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

/** Client i's request headers. */
type Headers = (i: number) => Record<string, string>;

async function measure(url: string, headers: Headers, n: number, pid: number) {
  const cpuBefore = await cpuSeconds(pid);
  const rss = sampleRss(pid, 20);
  const start = performance.now();
  const sizes = await Promise.all(Array.from({ length: n }, (_, i) => download(url, headers(i))));
  const seconds = (performance.now() - start) / 1000;
  const maxRss = await rss.stop();
  const bytes = sizes.reduce((a, b) => a + b, 0);
  const cpu = (await cpuSeconds(pid)) - cpuBefore;
  if (process.env.BENCH_DEBUG)
    console.log(`  ${url.slice(0, 40)} n=${n} ${seconds.toFixed(2)}s cpu=${cpu.toFixed(2)}s`);
  return { bytesPerSecond: bytes / seconds, seconds, cpu, maxRss };
}

const BASELINE = `
const http = require("node:http"), fs = require("node:fs");
const file = process.argv[1];
const size = fs.statSync(file).size;
const server = http.createServer((req, res) => {
  res.writeHead(200, { "content-length": size, "content-type": "application/octet-stream" });
  fs.createReadStream(file, { highWaterMark: 1 << 20 }).pipe(res);
});
server.listen(0, "127.0.0.1", () => console.log(JSON.stringify({ msg: "listening", url: "http://127.0.0.1:" + server.address().port })));
`;

async function main() {
  const world = await makeWorld();
  const work = await mkdtemp(join(tmpdir(), "eos-bench-"));
  const children: ChildProcess[] = [];
  try {
    const name = "EOS.bench";
    await writeServerConfig(world, [{ image: `${world.origin.url}/${name}.raw.xz`, name }]);
    await releaseImage(world, name, "1", { payloadBytes: 48 * 1024 * 1024, rootSizeMiB: 64 });
    const fetched = await runEos("os-update-server", ["fetch", "--config", world.config]);
    if (fetched.code !== 0) throw new Error(fetched.stderr);
    const root = await partitionBytes(join(world.imagesDir, `${name}.raw`), "p.lxreadonly");
    const plain = join(work, "root.bin");
    await writeFile(plain, root);
    // Each client is a device with its own token, as in a fleet: the server caps streams per device
    // (max_streams_per_device, 4 by default), and one shared token would turn N > 4 into 429s.
    const tokenStore = new TokenStore(join(work, "tokens"));
    const tokens: string[] = [];
    for (let i = 0; i < Math.max(...Ns); i++) tokens.push(await tokenStore.add(`bench-${i}`));

    const eos = spawn(process.execPath, [
      ...(process.env.BENCH_NODE_ARGS ? process.env.BENCH_NODE_ARGS.split(" ") : []),
      join(DIST, "os-update-server.mjs"),
      "serve",
      "--config",
      world.config,
      "--listen",
      "127.0.0.1",
      "--port",
      "0",
      "--tokens-dir",
      join(work, "tokens"),
    ]);
    children.push(eos);
    const eosUrl = `${String((await waitForLog(eos, "listening")).url)}/v1/images/${name}/root`;
    eos.stdout?.resume();
    const base = spawn(process.execPath, ["-e", BASELINE, plain], { stdio: ["ignore", "pipe", "inherit"] });
    children.push(base);
    const baseUrl = String((await waitForLog(base, "listening")).url);

    console.log(
      `bench/server: root stream of ${(root.length / 2 ** 20).toFixed(1)} MiB, loopback, ${Ns.join("/")} concurrent clients`,
    );
    console.log("baseline: node:http piping the same bytes from a plain file (1 MiB reads)");
    console.log(
      `eos: one token per client; caps (defaults): ${DEFAULT_STREAM_LIMITS.maxStreamsPerClient} streams per device, ${DEFAULT_STREAM_LIMITS.maxStreams} in all`,
    );
    console.log("N     eos MiB/s  base MiB/s  ratio  eos RSS MiB  base RSS MiB");
    const auth: Headers = (i) => ({ authorization: `Bearer ${tokens[i] as string}` });
    const none: Headers = () => ({});
    for (const n of Ns) {
      await measure(eosUrl, auth, 1, eos.pid as number); // warm up
      await measure(baseUrl, none, 1, base.pid as number);
      // Alternate the order over several rounds so neither server always runs on a warmer machine.
      const rounds = 3;
      const as = [];
      const bs = [];
      for (let r = 0; r < rounds; r++) {
        if (r % 2 === 0) {
          as.push(await measure(eosUrl, auth, n, eos.pid as number));
          bs.push(await measure(baseUrl, none, n, base.pid as number));
        } else {
          bs.push(await measure(baseUrl, none, n, base.pid as number));
          as.push(await measure(eosUrl, auth, n, eos.pid as number));
        }
      }
      const median = (xs: Array<{ bytesPerSecond: number; maxRss: number }>) => {
        const sorted = [...xs].sort((x, y) => x.bytesPerSecond - y.bytesPerSecond);
        return {
          bytesPerSecond: sorted[Math.floor(sorted.length / 2)]!.bytesPerSecond,
          maxRss: Math.max(...xs.map((x) => x.maxRss)),
        };
      };
      const a = median(as);
      const b = median(bs);
      const mib = (x: number) => (x / 2 ** 20).toFixed(0).padStart(9);
      console.log(
        `${String(n).padEnd(5)} ${mib(a.bytesPerSecond)}  ${mib(b.bytesPerSecond)}   ${(a.bytesPerSecond / b.bytesPerSecond).toFixed(2)}  ${mib(a.maxRss)}    ${mib(b.maxRss)}`,
      );
    }
    console.log(
      `peak RSS (VmHWM): eos ${((await peakRss(eos.pid as number)) / 2 ** 20).toFixed(0)} MiB, baseline ${((await peakRss(base.pid as number)) / 2 ** 20).toFixed(0)} MiB`,
    );
  } finally {
    for (const c of children) c.kill("SIGTERM");
    await new Promise((r) => setTimeout(r, 500));
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
    await rm(work, { recursive: true, force: true });
  }
}

await main();
