/**
 * bench/s3: the root stream served from an S3 bucket (`storage: s3://…`,
 * s3rver on loopback) next to the same stream served from the image
 * directory, in one run: N concurrent full downloads from each of two
 * `serve` processes, alternating, and the ratio S3 / directory. s3rver is a
 * test server (Koa, files on disk, in this process): the figure bounds what
 * the S3 path costs the update server, not what a real store delivers.
 *
 *   node --import tsx bench/s3.ts [N ...]     (default: 1 10)
 *
 * bench/fleet.ts runs the same case (`--stream N`) through streamBench.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { rm } from "node:fs/promises";
import { DIST, runEos, waitForLog } from "../test/helpers/run.ts";
import { makeWorld, releaseImage, writeServerConfig } from "../test/helpers/server-world.ts";
import { startS3, S3_KEY } from "../test/helpers/s3.ts";

const env = { ...process.env, ...S3_KEY };

function download(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false }, (res) => {
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

async function measure(url: string, n: number): Promise<number> {
  const start = performance.now();
  const sizes = await Promise.all(Array.from({ length: n }, () => download(url)));
  return sizes.reduce((a, b) => a + b, 0) / ((performance.now() - start) / 1000);
}

async function serve(config: string, children: ChildProcess[]): Promise<string> {
  const args = ["serve", "--config", config, "--listen", "127.0.0.1", "--port", "0", "--no-auth"];
  // Each server's control-plane database next to its config, never in the machine's /var/lib.
  const child = spawn(
    process.execPath,
    [join(DIST, "os-update-server.mjs"), ...args, "--state-dir", `${config}.state`],
    {
      env,
    },
  );
  children.push(child);
  const url = String((await waitForLog(child, "listening")).url);
  child.stdout?.resume();
  return url;
}

export interface StreamRow {
  clients: number;
  /** Median of 3, bytes per second. */
  s3: number;
  directory: number;
}

/**
 * The root stream (64 MiB) from `serve` on `storage: s3://…` (s3rver) and
 * from `serve` on the image directory, N concurrent full downloads from
 * each, alternating, for each N: one row per N, as it is measured.
 */
export async function streamBench(
  Ns: number[],
  row: (r: StreamRow) => void,
): Promise<{ streamBytes: number }> {
  const world = await makeWorld();
  const s3 = await startS3(join(world.dir, "s3"), ["eos-bench"]);
  const children: ChildProcess[] = [];
  try {
    const name = "EOS.bench";
    // One address for all clients (--no-auth): the per-device cap would turn N > 4 into 429s.
    await writeServerConfig(
      world,
      [{ image: `${world.origin.url}/${name}.raw.xz`, name, delta_from: 0 }],
      "serve:\n  max_streams_per_device: 1000",
    );
    const fsConfig = world.config;
    const s3Config = join(world.dir, "s3.yml");
    await writeFile(
      s3Config,
      `${await readFile(fsConfig, "utf8")}storage: s3://eos-bench/fleet\ns3:\n  endpoint: ${s3.storeEndpoint}\n`,
    );
    await releaseImage(world, name, "1", { payloadBytes: 48 * 1024 * 1024, rootSizeMiB: 64 });
    for (const config of [fsConfig, s3Config]) {
      const fetched = await runEos("os-update-server", ["fetch", "--config", config], { env });
      if (fetched.code !== 0) throw new Error(fetched.stderr);
    }
    const path = `/v1/images/${name}/root`;
    const fsUrl = `${await serve(fsConfig, children)}${path}`;
    const s3Url = `${await serve(s3Config, children)}${path}`;
    const streamBytes = await download(fsUrl);
    for (const n of Ns) {
      await measure(s3Url, 1);
      const s3s: number[] = [];
      const dirs: number[] = [];
      // Alternate the order so neither always runs on a warmer machine.
      for (let r = 0; r < 3; r++) {
        if (r % 2 === 0) {
          s3s.push(await measure(s3Url, n));
          dirs.push(await measure(fsUrl, n));
        } else {
          dirs.push(await measure(fsUrl, n));
          s3s.push(await measure(s3Url, n));
        }
      }
      const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[1] as number;
      row({ clients: n, s3: median(s3s), directory: median(dirs) });
    }
    return { streamBytes };
  } finally {
    for (const c of children) c.kill("SIGTERM");
    await new Promise((r) => setTimeout(r, 300));
    await s3.close();
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  }
}

export const streamHeader =
  "baseline: the same server on the image directory; s3: serve on storage: s3:// (s3rver)\nN     s3 MiB/s  dir MiB/s  ratio";

export function streamLine(r: StreamRow): string {
  const mib = (x: number) => (x / 2 ** 20).toFixed(0).padStart(8);
  return `${String(r.clients).padEnd(5)} ${mib(r.s3)}  ${mib(r.directory)}   ${(r.s3 / r.directory).toFixed(2)}`;
}

async function main() {
  const counts = process.argv
    .slice(2)
    .map(Number)
    .filter((n) => n > 0);
  const Ns = counts.length ? counts : [1, 10];
  console.log(`bench/s3: root stream of 64 MiB, loopback, ${Ns.join("/")} concurrent clients`);
  console.log(streamHeader);
  await streamBench(Ns, (r) => console.log(streamLine(r)));
}

// Run as a script; imported by bench/fleet.ts for streamBench.
if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) await main();
