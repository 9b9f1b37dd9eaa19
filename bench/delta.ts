/**
 * bench/delta: what a device downloads for one update, by path, through the
 * real server and `os-update --apply` (a separate process, as on a device)
 * into slot B of a loop device, next to the tools the paths are measured
 * against, computed here on the same two root partitions (issue 12,
 * "Measured").
 *
 *   node --import tsx bench/delta.ts [--pair OLD.raw NEW.raw] [--json]
 *
 * The pair: two disk images as `eos build` writes them, e.g. the demo's
 * (`eos demo` leaves .tmp/demo/v1.0.0/EOS.raw and .tmp/demo/v2.0.0/EOS.raw;
 * the vm tests .tmp/vm/demo/…). Without a pair it makes the small fixture
 * pair the integration tests use (80 MiB slots, 12 MiB of data, v2 changes
 * a few small files). Run `node scripts/bundle.mjs` first.
 *
 * Per path (full stream, chunk index, pair delta): bytes on the wire (the
 * server's request log), wall time of `--apply`, the bytes it read (its own
 * /proc/self/io at exit, written by a hook loaded with --import) and its
 * peak RSS with its children (xdelta3, losetup), counted as the device pays
 * for them:
 * os-update's own VmHWM plus its children's VmHWM at the highest sum seen
 * among those alive together (bench/proc-stats sampleTreeRss; a child
 * forked but not yet exec'd shares os-update's pages and is not counted).
 * Each apply (`--root-device`: an offline disk, so it stops at the trial
 * mark and hashes the running slot once itself) starts from a zeroed slot B
 * after a `--check` (as on a device, where checks run on a timer before an
 * apply: the running root's chunk list is cached). Baselines: `xdelta3 -9`
 * and casync's new chunks (`casync make` of both roots into one store) on
 * the extracted partitions; `zstd --patch-from` for reference.
 * BENCH_NODE_ARGS (e.g. "--trace-gc") is passed to the applies' node.
 */
import { spawn, spawnSync } from "node:child_process";
import { createReadStream, createWriteStream } from "node:fs";
import { copyFile, mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { readGpt, requirePartition, partitionRange, type ByteRange } from "../src/core/gpt.ts";
import { openBlockSource } from "../src/io/files.ts";
import { writeBootControl } from "../src/io/update/boot-control.ts";
import { DIST, mustRun, runEos } from "../test/helpers/run.ts";
import { makeSampleImage } from "../test/helpers/sample-image.ts";
import { startServer } from "../test/helpers/serve.ts";
import { makeWorld, writeServerConfig, type World } from "../test/helpers/server-world.ts";
import { makeDevice, type TestDevice } from "../test/helpers/device.ts";
import { decodeDeltaIndex, MAX_DELTA_BYTES } from "../src/core/update/delta-index.ts";
import { sampleTreeRss } from "./proc-stats.ts";

const argv = process.argv.slice(2);
const pairAt = argv.indexOf("--pair");
const args = pairAt >= 0 ? argv.slice(pairAt + 1, pairAt + 3) : argv.filter((a) => !a.startsWith("--"));
const asJson = argv.includes("--json");
if ((args.length !== 0 && args.length !== 2) || args.some((a) => a.startsWith("--"))) {
  console.error("usage: node --import tsx bench/delta.ts [--pair OLD.raw NEW.raw] [--json]");
  process.exit(2);
}
/** The issue's targets. */
const RSS_TARGET_MIB = 96;
/** One image name per path the server offers: with deltas, and without (delta_from: 0). */
const WITH_DELTA = "EOS.bench-delta";
const CHUNKS_ONLY = "EOS.bench-chunks";
const MiB = 2 ** 20;
/** Loaded into each --apply: its /proc/self/io at exit, to the file BENCH_IO_FILE names. */
const READ_BYTES_HOOK = `data:text/javascript,${encodeURIComponent(
  'import { readFileSync, writeFileSync } from "node:fs"; process.on("exit", () => writeFileSync(process.env.BENCH_IO_FILE, readFileSync("/proc/self/io")));',
)}`;

interface Manifest {
  version: string;
  partitions: { root: { sha256: string; size: number; data_bytes?: number } };
}

async function rootRange(raw: string): Promise<ByteRange> {
  const source = await openBlockSource(raw);
  try {
    const { table } = await readGpt(source);
    return partitionRange(table, requirePartition(table, "p.lxreadonly"));
  } finally {
    await source.close();
  }
}

async function extract(raw: string, range: ByteRange, out: string): Promise<void> {
  await pipeline(
    createReadStream(raw, { start: range.offset, end: range.offset + range.length - 1 }),
    createWriteStream(out),
  );
}

/** Runs a tool under /usr/bin/time: wall seconds and peak RSS in MiB. */
function timed(argv: string[]): { seconds: number; rssMiB: number } {
  const t0 = performance.now();
  const r = spawnSync("/usr/bin/time", ["-f", "%M", ...argv], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${argv.join(" ")}: ${r.stderr}`);
  const kb = Number(r.stderr.trim().split("\n").at(-1));
  return { seconds: (performance.now() - t0) / 1000, rssMiB: kb / 1024 };
}

/** Signs `raw` as NAME VERSION with the world's key and puts it at the origin, as a release would. */
async function place(world: World, name: string, version: string, raw: string): Promise<Manifest> {
  const build = join(world.dir, "build", `${name}.raw`);
  await mkdir(join(world.dir, "build"), { recursive: true });
  await copyFile(raw, build);
  const key = join(world.keysDir, "release.key");
  const signed = await runEos("eos", ["manifest", build, "--key", key, "--version", version, "--name", name]);
  if (signed.code !== 0) throw new Error(signed.stderr);
  await mustRun("zstd", ["-q", "-f", "-1", "-T0", build, "-o", join(world.originDir, `${name}.raw.zst`)]);
  for (const f of [".manifest.json", ".manifest.json.sig"])
    await copyFile(`${build}${f}`, join(world.originDir, `${name}.raw${f}`));
  return JSON.parse(await readFile(`${build}.manifest.json`, "utf8")) as Manifest;
}

/** casync's new chunks: the bytes of the chunk files NEW adds to a store that holds OLD's. */
async function casyncNewBytes(work: string, a: string, b: string): Promise<number> {
  const store = join(work, "store");
  const files = async () => {
    const out = new Map<string, number>();
    for (const dir of await readdir(store).catch(() => [] as string[]))
      for (const f of await readdir(join(store, dir))) out.set(f, (await stat(join(store, dir, f))).size);
    return out;
  };
  timed(["casync", "make", `--store=${store}`, join(work, "old.caibx"), a]);
  const before = await files();
  timed(["casync", "make", `--store=${store}`, join(work, "new.caibx"), b]);
  let bytes = 0;
  for (const [f, size] of await files()) if (!before.has(f)) bytes += size;
  return bytes;
}

const world = await makeWorld();
const stops: Array<() => unknown> = [];
try {
  const work = join(world.dir, "bench");
  await mkdir(work);
  let [oldRaw, newRaw] = args as [string | undefined, string | undefined];
  if (!oldRaw || !newRaw) {
    // The integration tests' pair: the same seed, v2 changes a few small files.
    const fixture = { payloadBytes: 12 * MiB, rootSizeMiB: 80, seed: "base", verity: true };
    [oldRaw, newRaw] = [join(work, "fixture-v1.raw"), join(work, "fixture-v2.raw")];
    await makeSampleImage(oldRaw, { ...fixture, version: "1" });
    await makeSampleImage(newRaw, { ...fixture, version: "2" });
  }
  await writeServerConfig(world, [
    { image: `${world.origin.url}/${WITH_DELTA}.raw.zst`, name: WITH_DELTA },
    { image: `${world.origin.url}/${CHUNKS_ONLY}.raw.zst`, name: CHUNKS_ONLY, delta_from: 0 },
  ]);
  const olds: Record<string, Manifest> = {};
  for (const name of [WITH_DELTA, CHUNKS_ONLY]) olds[name] = await place(world, name, "1", oldRaw);
  const fetch = async () => {
    const r = await runEos("os-update-server", ["fetch", "--config", world.config]);
    if (r.code !== 0) throw new Error(r.stderr);
    return `${r.stdout}\n${r.stderr}`;
  };
  await fetch();
  for (const name of [WITH_DELTA, CHUNKS_ONLY]) await place(world, name, "2", newRaw);
  // A delta above MAX_DELTA_BYTES is made, logged and not kept: its size comes from the log.
  const notKept = (await fetch())
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as { msg: string; image?: string; bytes?: number })
    .find((l) => l.msg === "delta not kept" && l.image === WITH_DELTA);

  const { child, url } = await startServer({ config: world.config });
  stops.push(() => child.kill("SIGTERM"));
  let served = 0;
  let buffer = "";
  child.stdout?.on("data", (s: Buffer | string) => {
    buffer += s.toString();
    for (let nl; (nl = buffer.indexOf("\n")) >= 0; buffer = buffer.slice(nl + 1)) {
      const line = JSON.parse(buffer.slice(0, nl)) as { msg: string; bytes?: number };
      if (line.msg === "request") served += line.bytes ?? 0;
    }
  });

  /** One --apply by `path` on a fresh slot B: bytes served, wall seconds, peak RSS. */
  const applyOnce = async (device: TestDevice, name: string, options: string[]) => {
    // An offline disk: the apply stops after marking the trial (no kexec out of the bench).
    const extra = [...options, "--root-device", device.loop, "--esp", device.esp];
    const config = join(device.root, "etc/os-update.yml");
    await writeFile(config, `update:\n  name: ${name}\n  url: ${url}\n`);
    const env = await device.grubenv();
    for (const k of ["eos_trial", "eos_B_version", "eos_B_sha256", "eos_B_size"]) env.set(k, "");
    env.set("eos_tries", "0");
    await writeBootControl(device.esp, env);
    const slotB = `${device.loop}p3`;
    const size = (await mustRun("blockdev", ["--getsize64", slotB])).stdout.toString().trim();
    const zero = ["if=/dev/zero", `of=${slotB}`, "bs=4M", "iflag=count_bytes", `count=${size}`, "conv=fsync"];
    await mustRun("dd", [...zero, "status=none"]);
    await mustRun("blockdev", ["--flushbufs", device.loop]);
    const check = await device.run(["--check", ...extra]);
    if (check.code !== 1) throw new Error(`--check: ${check.stdout}${check.stderr}`);
    served = 0;
    const t0 = performance.now();
    // The node flags the device runs os-update with: its shebang's (`#!/usr/bin/env -S node …`).
    const shebang = (await readFile(join(DIST, "os-update.mjs"), "utf8")).split("\n", 1)[0] ?? "";
    const nodeArgs = [
      ...(/^#!\/usr\/bin\/env -S node (.*)$/.exec(shebang)?.[1] ?? "").split(" "),
      ...(process.env.BENCH_NODE_ARGS ?? "").split(" "),
    ].filter(Boolean);
    const ioFile = join(work, "apply-io.txt");
    await rm(ioFile, { force: true });
    const proc = spawn(
      process.execPath,
      [...nodeArgs, "--import", READ_BYTES_HOOK, join(DIST, "os-update.mjs"), "--apply", ...extra],
      {
        env: { ...process.env, EOS_ROOT: device.root, BENCH_IO_FILE: ioFile },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    const rss = sampleTreeRss(proc.pid as number, 10);
    let out = "";
    proc.stdout.on("data", (s: Buffer) => (out += s.toString()));
    proc.stderr.on("data", (s: Buffer) => (out += s.toString()));
    const code = await new Promise<number | null>((resolve) => proc.on("exit", resolve));
    const peak = await rss.stop();
    const seconds = (performance.now() - t0) / 1000;
    if (code !== 0) throw new Error(`--apply ${options.join(" ")}: ${out}`);
    const io = await readFile(ioFile, "utf8");
    const ioField = (name: string) => Number(new RegExp(`${name}: (\\d+)`).exec(io)?.[1]);
    const [, payload, path] = /from (\d+) bytes downloaded \((\w+)\)/.exec(out) ?? [];
    const failed = /the \w+ path failed .*/.exec(out)?.[0];
    await new Promise((r) => setTimeout(r, 200)); // the server's last log lines
    const mib = (n: number) => Math.round(n / MiB);
    const rssMiB = mib(peak.peak);
    const children = Object.entries(peak.children)
      .filter(([, n]) => n >= MiB)
      .map(([name, n]) => `${name} ${mib(n)}`)
      .join(", ");
    const rssDetail = `os-update ${mib(peak.own)} MiB + children ${children || "none"}; sampled together ${mib(peak.sampled)} MiB`;
    return {
      path,
      bytes: served,
      payload: Number(payload),
      seconds: Math.round(seconds * 100) / 100,
      rssMiB,
      rssDetail,
      failed,
      // What os-update read (its own /proc/self/io at exit): all reads, and those that reached storage.
      readBytes: ioField("rchar"),
      storageReadBytes: ioField("read_bytes"),
    };
  };

  const copy = join(work, "device.raw");
  await copyFile(oldRaw, copy);
  const device = await makeDevice(copy, olds[WITH_DELTA] as Manifest, {
    config: "",
    keys: [join(world.keysDir, "release.pub")],
  });
  stops.push(() => device.close());
  const full = await applyOnce(device, WITH_DELTA, ["--no-delta"]);
  const chunks = await applyOnce(device, CHUNKS_ONLY, []);
  const delta = await applyOnce(device, WITH_DELTA, []);
  for (const [want, got] of [
    ["full", full],
    ["chunks", chunks],
  ] as const)
    if (got.path !== want) throw new Error(`the ${want} run took the ${got.path} path: ${got.failed}`);
  // The server's delta for this pair, kept or not: above MAX_DELTA_BYTES (a device holds a
  // delta in memory to check its hash) it is not kept and the device takes the chunk path,
  // which the delta_* figures then measure.
  const published = decodeDeltaIndex(
    Buffer.from(await (await globalThis.fetch(`${url}/v1/images/${WITH_DELTA}/deltas`)).arrayBuffer()),
  ).deltas.find((d) => d.from_sha256 === olds[WITH_DELTA]?.partitions.root.sha256);
  const deltaSize = published?.size ?? notKept?.bytes;
  if (deltaSize === undefined) throw new Error("the server made no delta for the pair");
  const deltaDeclined = published
    ? undefined
    : `not kept by the server: ${deltaSize} B > ${MAX_DELTA_BYTES} B; the device took ${delta.path}`;
  if (delta.path !== (published ? "delta" : "chunks"))
    throw new Error(`the delta run took the ${delta.path} path: ${delta.failed}`);

  const [a, b] = [join(work, "old.root"), join(work, "new.root")];
  await extract(oldRaw, await rootRange(oldRaw), a);
  await extract(newRaw, await rootRange(newRaw), b);
  timed(["xdelta3", "-e", "-9", "-f", "-s", a, b, join(work, "plain.xd3")]);
  const xdelta3Bytes = (await stat(join(work, "plain.xd3"))).size;
  timed(["zstd", "-q", "-19", "--long=29", "-f", `--patch-from=${a}`, b, "-o", join(work, "patch.zst")]);
  const zstdBytes = (await stat(join(work, "patch.zst"))).size;
  const casyncBytes = await casyncNewBytes(work, a, b);

  const result = {
    pair: args.length
      ? `${oldRaw} → ${newRaw}`
      : "fixture (80 MiB slots, 12 MiB of data, a few files changed)",
    // What each path downloads (the chunk path with its index); *_wire_bytes: all of --apply's requests.
    full_bytes: full.payload,
    chunk_bytes: chunks.payload,
    delta_bytes: deltaSize,
    // Set when the server did not keep the delta (too large for a device); the delta_* figures are then the path taken.
    delta_declined: deltaDeclined,
    xdelta3_bytes: xdelta3Bytes,
    casync_bytes: casyncBytes,
    zstd_patch_bytes: zstdBytes,
    full_wire_bytes: full.bytes,
    chunk_wire_bytes: chunks.bytes,
    delta_wire_bytes: delta.bytes,
    full_apply_s: full.seconds,
    chunk_apply_s: chunks.seconds,
    delta_apply_s: delta.seconds,
    // The delta path's, which the target is for; each path's next to it.
    peak_rss_mib: delta.rssMiB,
    full_peak_rss_mib: full.rssMiB,
    chunk_peak_rss_mib: chunks.rssMiB,
    delta_peak_rss_mib: delta.rssMiB,
    // Bytes os-update read (all of its reads: the slots, the network, its own code), and from storage.
    full_read_bytes: full.readBytes,
    chunk_read_bytes: chunks.readBytes,
    delta_read_bytes: delta.readBytes,
    full_storage_read_bytes: full.storageReadBytes,
    chunk_storage_read_bytes: chunks.storageReadBytes,
    delta_storage_read_bytes: delta.storageReadBytes,
    rss_detail: { full: full.rssDetail, chunk: chunks.rssDetail, delta: delta.rssDetail },
  };
  if (asJson) console.log(JSON.stringify(result));
  else {
    const size = (n: number) => (n < 10_000 ? `${n} B` : `${(n / 1000).toFixed(0)} KB`);
    const ratio = (x: number, y: number) => (x / y).toFixed(2);
    const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;
    const r = result;
    console.log(`bench/delta: ${r.pair}`);
    console.log(
      `full stream: ${size(r.full_bytes)} (${size(r.full_wire_bytes)} on the wire), --apply ${r.full_apply_s} s, peak RSS ${r.full_peak_rss_mib} MiB (${r.rss_detail.full}) (the baseline for time)`,
    );
    console.log(
      `chunk path: ${size(r.chunk_bytes)} with its index (${size(r.chunk_wire_bytes)} on the wire); casync new chunks (baseline): ${size(casyncBytes)}, ratio ${ratio(r.chunk_bytes, casyncBytes)} (target ≤ 0.8); --apply ${r.chunk_apply_s} s, ratio to full ${ratio(r.chunk_apply_s, r.full_apply_s)}, read ${mb(r.chunk_read_bytes)} (${mb(r.chunk_storage_read_bytes)} from storage; full stream ${mb(r.full_read_bytes)}, ratio ${ratio(r.chunk_read_bytes, r.full_read_bytes)}); peak RSS ${r.chunk_peak_rss_mib} MiB (${r.rss_detail.chunk}), ratio to ${RSS_TARGET_MIB} MiB ${ratio(r.chunk_peak_rss_mib, RSS_TARGET_MIB)}`,
    );
    console.log(
      `pair delta: ${size(r.delta_bytes)}${r.delta_declined ? ` (${r.delta_declined}: its figures below)` : ` (${size(r.delta_wire_bytes)} on the wire)`}; xdelta3 -9 (baseline): ${size(xdelta3Bytes)}, ratio ${ratio(r.delta_bytes, xdelta3Bytes)} (target ≤ 1.05); zstd -19 --long --patch-from: ${size(zstdBytes)}; --apply ${r.delta_apply_s} s, ratio to full ${ratio(r.delta_apply_s, r.full_apply_s)} (target ≤ 1.5); peak RSS ${r.delta_peak_rss_mib} MiB (${r.rss_detail.delta}), ratio to ${RSS_TARGET_MIB} MiB ${ratio(r.delta_peak_rss_mib, RSS_TARGET_MIB)} (target ≤ 1)`,
    );
  }
} finally {
  for (const stop of stops.reverse()) await stop();
  await world.origin.close();
  await rm(world.dir, { recursive: true, force: true });
}
