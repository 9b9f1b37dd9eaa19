/**
 * bench/delta: what a device downloads for one update, by path, next to the
 * tools the delta path is measured against, computed here on the same two
 * root partitions.
 *
 *   node --import tsx bench/delta.ts OLD.raw NEW.raw [--json]
 *
 * e.g. the demo's pair: `eos demo` leaves .tmp/demo/v1.0.0/EOS.raw and
 * .tmp/demo/v2.0.0/EOS.raw. Figures: the full root (what --apply moves
 * without a delta), the pair delta EOS's server makes (through its own code),
 * `xdelta3 -9` with its defaults and `zstd -19 --long --patch-from`; then the
 * device side: decoding the delta into a file against the old root (wall
 * time and the decoder's peak RSS) next to copying the full root (baseline).
 */
import { spawnSync } from "node:child_process";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { readGpt, requirePartition, partitionRange, type ByteRange } from "../src/core/gpt.ts";
import { decodeDeltaIndex, DELTA_WINDOW } from "../src/core/update/delta-index.ts";
import { openBlockSource } from "../src/io/files.ts";
import { hashRange } from "../src/io/hash.ts";
import { silentLogger } from "../src/io/log.ts";
import { systemRunner } from "../src/io/process.ts";
import { makeDeltas } from "../src/io/server/deltas.ts";

const [oldRaw, newRaw] = process.argv.slice(2).filter((a) => !a.startsWith("--"));
const asJson = process.argv.includes("--json");
if (!oldRaw || !newRaw) {
  console.error("usage: node --import tsx bench/delta.ts OLD.raw NEW.raw [--json]");
  process.exit(2);
}

async function rootOf(raw: string): Promise<{ range: ByteRange; sha256: string }> {
  const source = await openBlockSource(raw);
  try {
    const { table } = await readGpt(source);
    const range = partitionRange(table, requirePartition(table, "p.lxreadonly"));
    return { range, sha256: await hashRange(source.handle, range.offset, range.length) };
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

const work = await mkdtemp(join(tmpdir(), "eos-bench-delta-"));
try {
  const [from, to] = [await rootOf(oldRaw), await rootOf(newRaw)];
  const [a, b] = [join(work, "old.root"), join(work, "new.root")];
  await extract(oldRaw, from.range, a);
  await extract(newRaw, to.range, b);

  const index = decodeDeltaIndex(
    await makeDeltas(systemRunner(), {
      name: "bench",
      dir: work,
      to: { version: "new", rawPath: newRaw, root: to.range, sha256: to.sha256 },
      from: [{ version: "old", rawPath: oldRaw, root: from.range, sha256: from.sha256 }],
      logger: silentLogger(),
    }),
  );
  const delta = index.deltas[0];
  if (!delta) throw new Error("the server made no delta");
  const deltaFile = join(work, "deltas", `${from.sha256}.xd3`);

  timed(["xdelta3", "-e", "-9", "-f", "-s", a, b, join(work, "plain.xd3")]);
  const xdelta3Bytes = (await stat(join(work, "plain.xd3"))).size;
  timed(["zstd", "-q", "-19", "--long=29", "-f", `--patch-from=${a}`, b, "-o", join(work, "patch.zst")]);
  const zstdBytes = (await stat(join(work, "patch.zst"))).size;

  const decode = timed([
    "xdelta3",
    "-d",
    "-f",
    "-B",
    String(DELTA_WINDOW),
    "-s",
    a,
    deltaFile,
    join(work, "decoded.root"),
  ]);
  const copy = timed(["dd", `if=${b}`, `of=${join(work, "copied.root")}`, "bs=4M", "status=none"]);
  if (spawnSync("cmp", [b, join(work, "decoded.root")]).status !== 0) throw new Error("decoded root differs");

  const result = {
    pair: `${oldRaw} → ${newRaw}`,
    full_bytes: to.range.length,
    delta_bytes: delta.size,
    xdelta3_bytes: xdelta3Bytes,
    zstd_patch_bytes: zstdBytes,
    delta_decode_s: Math.round(decode.seconds * 100) / 100,
    full_copy_s: Math.round(copy.seconds * 100) / 100,
    decoder_peak_rss_mib: Math.round(decode.rssMiB),
  };
  if (asJson) console.log(JSON.stringify(result));
  else {
    const kb = (n: number) => `${(n / 1000).toFixed(0)} KB`;
    console.log(`bench/delta: ${result.pair}`);
    console.log(
      `full root: ${(result.full_bytes / 2 ** 20).toFixed(0)} MiB (what --apply moves without a delta)`,
    );
    console.log(
      `EOS pair delta: ${kb(result.delta_bytes)}; xdelta3 -9 (baseline): ${kb(xdelta3Bytes)}, ratio ${(result.delta_bytes / xdelta3Bytes).toFixed(2)}; zstd -19 --long --patch-from: ${kb(zstdBytes)}`,
    );
    console.log(
      `device: decode ${result.delta_decode_s} s (decoder peak RSS ${result.decoder_peak_rss_mib} MiB) vs copying the full root ${result.full_copy_s} s: ratio ${(result.delta_decode_s / result.full_copy_s).toFixed(2)}`,
    );
  }
} finally {
  await rm(work, { recursive: true, force: true });
}
