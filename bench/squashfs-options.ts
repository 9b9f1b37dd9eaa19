/**
 * bench/squashfs-options: which mksquashfs options make an update between
 * two builds cheap (issue 12 item 7). The two roots of a pair (disk images
 * as `eos build` writes them, e.g. the demo's v1 and v2) are unpacked once
 * (unsquashfs, owners and xattrs kept; cached in the work directory), then
 * each option set builds both trees again the way the image build does
 * (makeRootImage with the pair's own SOURCE_DATE_EPOCH, then addVerity), and
 * prints, beside the set the build uses today:
 *   - the chunk path's bytes: what a device running v1 downloads with v2's
 *     chunk index (the project's chunker and request planner), index included;
 *   - the pair delta: the server's own xdelta3 command on the file systems;
 *   - the root's size (file system + dm-verity tree) and mksquashfs's time;
 *   - whether GRUB 2.06 reads v2's kernel and initrd from it (grub-fstest).
 *
 *   node --import tsx bench/squashfs-options.ts --pair OLD.raw NEW.raw [--work DIR] [--trees DIR]
 *     [--subset PATHS] [--sets a,b] [--json]
 *
 * Without --pair it takes the demo's pair (.tmp/demo/v1.0.0 and v2.0.0 in the
 * current directory). Each set costs two mksquashfs runs of the root (about a
 * minute each for the demo's xz root on 2 cores).
 */
import { spawnSync } from "node:child_process";
import { createReadStream, createWriteStream } from "node:fs";
import { copyFile, lstat, mkdir, open, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { pipeline } from "node:stream/promises";
import { basename, dirname, join, resolve } from "node:path";
import { readGpt, requirePartition, partitionRange, type ByteRange } from "../src/core/gpt.ts";
import { ChunkHasher, DEFAULT_CHUNKER, type Chunk } from "../src/core/update/chunker.ts";
import { CHUNK_INDEX_SCHEMA, encodeChunkIndex } from "../src/core/update/chunk-index.ts";
import { assembledChunks, computedTree, planChunkWork } from "../src/core/update/chunk-plan.ts";
import { xdelta3EncodeArgv } from "../src/core/update/delta-index.ts";
import { squashfsBytesUsed, verityLayout } from "../src/core/verity.ts";
import { openBlockSource } from "../src/io/files.ts";
import { addVerity, makeRootImage, ROOT_SQUASHFS_OPTIONS } from "../src/io/image/disk.ts";
import { systemRunner } from "../src/io/process.ts";

interface OptionSet {
  name: string;
  compression: "xz" | "gzip";
  options: string[];
  why: string;
}

/** The sets measured; "default" is what makeRootImage does today. Only xz and gzip: GRUB 2.06 reads no zstd. */
const SETS: OptionSet[] = [
  { name: "default", compression: "xz", options: [...ROOT_SQUASHFS_OPTIONS], why: "the build today" },
  { name: "fragments", compression: "xz", options: [], why: "the build before -no-fragments" },
  { name: "as-built", compression: "xz", options: [], why: "the pair's own roots, not rebuilt" },
  {
    name: "no-fragments",
    compression: "xz",
    options: ["-no-fragments"],
    why: "small files in blocks of their own: a new file does not repack its neighbours",
  },
  {
    name: "always-fragments",
    compression: "xz",
    options: ["-always-use-fragments"],
    why: "tails of large files packed too",
  },
  { name: "b64k", compression: "xz", options: ["-b", "64K"], why: "smaller blocks" },
  { name: "b256k", compression: "xz", options: ["-b", "256K"], why: "larger blocks" },
  { name: "b1m", compression: "xz", options: ["-b", "1M"], why: "largest blocks" },
  { name: "bcj-x86", compression: "xz", options: ["-Xbcj", "x86"], why: "x86 branch filter" },
  {
    name: "no-fragments-b64k",
    compression: "xz",
    options: ["-no-fragments", "-b", "64K"],
    why: "both",
  },
  { name: "gzip", compression: "gzip", options: [], why: "gzip instead of xz" },
];

const argv = process.argv.slice(2);
const flag = (name: string) => {
  const at = argv.indexOf(name);
  return at >= 0 ? argv[at + 1] : undefined;
};
const pairAt = argv.indexOf("--pair");
const pair =
  pairAt >= 0 ? argv.slice(pairAt + 1, pairAt + 3) : [".tmp/demo/v1.0.0/EOS.raw", ".tmp/demo/v2.0.0/EOS.raw"];
const work = resolve(flag("--work") ?? ".tmp/bench-squashfs");
const wanted = flag("--sets")?.split(",");
const asJson = argv.includes("--json");
const sets = SETS.filter(
  (s) =>
    (s.name === "default" || !wanted || wanted.includes(s.name)) &&
    !(s.name === "as-built" && argv.includes("--subset")),
);
if (pair.length !== 2 || pair.some((p) => !p || p.startsWith("--")) || (wanted && sets.length < 2)) {
  console.error(
    `usage: node --import tsx bench/squashfs-options.ts [--pair OLD.raw NEW.raw] [--work DIR] [--sets ${SETS.map((s) => s.name).join(",")}] [--json]`,
  );
  process.exit(2);
}

function run(args: string[]): void {
  const r = spawnSync(args[0] as string, args.slice(1), {
    encoding: "utf8",
    stdio: ["ignore", "ignore", "pipe"],
  });
  if (r.status !== 0) throw new Error(`${args.join(" ")}: exit ${r.status}: ${r.stderr}`);
}

/** The root slot of a disk image, the squashfs's length in it and its mkfs time (the build's epoch). */
async function rootOf(raw: string): Promise<{ range: ByteRange; fsBytes: number; epoch: number }> {
  const source = await openBlockSource(raw);
  let range: ByteRange;
  try {
    const { table } = await readGpt(source);
    range = partitionRange(table, requirePartition(table, "p.lxreadonly"));
  } finally {
    await source.close();
  }
  const handle = await open(raw, "r");
  try {
    const head = Buffer.alloc(96);
    await handle.read(head, 0, head.length, range.offset);
    const fsBytes = squashfsBytesUsed(head);
    if (fsBytes === undefined) throw new Error(`${raw}: no squashfs in p.lxreadonly`);
    return { range, fsBytes, epoch: head.readUInt32LE(8) };
  } finally {
    await handle.close();
  }
}

/** Unpacks the root of `raw` into `dir` once (as root: owners, modes and xattrs kept). */
async function unpack(raw: string, offset: number, dir: string): Promise<void> {
  const stamp = `${dir}.unpacked`;
  if (await stat(stamp).catch(() => undefined)) return;
  await rm(dir, { recursive: true, force: true });
  run(["unsquashfs", "-no-progress", "-quiet", "-o", String(offset), "-d", dir, raw]);
  await writeFile(stamp, `${raw}\n`);
}

async function chunksOf(file: string, length: number): Promise<Chunk[]> {
  const hasher = new ChunkHasher(DEFAULT_CHUNKER);
  const stream = createReadStream(file, { start: 0, end: length - 1, highWaterMark: 1 << 20 });
  for await (const piece of stream as AsyncIterable<Buffer>) hasher.push(piece);
  return hasher.end();
}

interface Result {
  set: string;
  options: string;
  fs_bytes: number;
  /** The pair's own roots, not rebuilt. */
  as_built: boolean;
  /** GRUB 2.06's squashfs reader reads v2's kernel and initrd. */
  grub_reads: boolean;
  root_bytes: number;
  chunk_bytes: number;
  new_chunk_bytes: number;
  /** Of the new chunks: bytes in squashfs data blocks, its metadata tables, the dm-verity tree. */
  new_chunks_by_region: { data: number; metadata: number; verity: number };
  index_bytes: number;
  requests: number;
  xdelta3_bytes: number;
  mksquashfs_s: number;
}

interface Built {
  /** The root as a slot holds it: file system, then its dm-verity tree. */
  root: string;
  rootBytes: number;
  /** The file system alone, as the server's xdelta3-verity delta covers it. */
  fs: string;
  fsBytes: number;
}

/**
 * A set's two roots, built from the trees as the image build does; kept in
 * its directory (built.json) and reused by the next run with the same
 * options, so a run can print sets measured one by one.
 */
async function build(set: OptionSet, dir: string, trees: [string, string], epoch: number) {
  const stamp = join(dir, "built.json");
  const key = { options: [set.compression, ...set.options], epoch, trees };
  const kept = await readFile(stamp, "utf8")
    .then((t) => JSON.parse(t) as { key: unknown; built: [Built, Built]; seconds: number })
    .catch(() => undefined);
  if (kept && JSON.stringify(kept.key) === JSON.stringify(key)) {
    // Where the files are now (a set's directory may have been renamed).
    for (const b of kept.built) [b.root, b.fs] = [join(dir, basename(b.root)), join(dir, basename(b.fs))];
    return kept;
  }
  const proc = systemRunner();
  const desc = { root: { filesystem: "squashfs" as const, compression: set.compression, verity: true } };
  const built: Built[] = [];
  let seconds = 0;
  for (const [i, tree] of trees.entries()) {
    const root = join(dir, `v${i + 1}.root`);
    const fs = join(dir, `v${i + 1}.fs`);
    const t0 = performance.now();
    const fsBytes = await makeRootImage(proc, desc, tree, fs, epoch, undefined, set.options);
    seconds = (performance.now() - t0) / 1000;
    await copyFile(fs, root);
    built.push({ root, fs, fsBytes, rootBytes: (await addVerity(proc, root)).bytes });
  }
  const result = { key, built: built as [Built, Built], seconds };
  await writeFile(stamp, JSON.stringify(result));
  return result;
}

/** The pair's roots as the build made them (the "as built" row: no rebuild). */
async function asBuilt(dir: string): Promise<[Built, Built]> {
  const out: Built[] = [];
  for (const [i, raw] of pair.entries()) {
    const r = roots[i] as Root;
    const root = join(dir, `v${i + 1}.root`);
    const fs = join(dir, `v${i + 1}.fs`);
    const rootBytes = verityLayout(r.fsBytes).totalBytes;
    await extract(raw as string, r.range.offset, rootBytes, root);
    await extract(raw as string, r.range.offset, r.fsBytes, fs);
    out.push({ root, rootBytes, fs, fsBytes: r.fsBytes });
  }
  return out as [Built, Built];
}

async function extract(raw: string, offset: number, length: number, out: string): Promise<void> {
  await pipeline(createReadStream(raw, { start: offset, end: offset + length - 1 }), createWriteStream(out));
}

/** Where in a root a byte lies: squashfs data blocks, its metadata tables, or the dm-verity tree. */
async function regionsOf(root: string): Promise<(offset: number) => "data" | "metadata" | "verity"> {
  const handle = await open(root, "r");
  try {
    const head = Buffer.alloc(96);
    await handle.read(head, 0, head.length, 0);
    const inodeTable = Number(head.readBigUInt64LE(64));
    const verityAt = verityLayout(squashfsBytesUsed(head) as number).superblockOffset;
    return (offset) => (offset < inodeTable ? "data" : offset < verityAt ? "metadata" : "verity");
  } finally {
    await handle.close();
  }
}

/**
 * Whether GRUB 2.06's own squashfs reader (grub-fstest runs GRUB's file
 * system and decompressor code; it refuses a zstd root: "unknown
 * filesystem") reads the kernel and initrd of `fs` as the tree holds them:
 * GRUB loads both from the slot.
 */
async function grubReads(fs: string, tree: string): Promise<boolean> {
  const boot = await readdir(join(tree, "boot")).catch(() => [] as string[]);
  const files = boot.filter((f) => /^(vmlinuz|initrd\.img)-/.test(f)).map((f) => `boot/${f}`);
  // A --subset tree without /boot: programs it has instead (files: a link may point off the tree).
  if (files.length === 0)
    for (const f of await readdir(join(tree, "usr/bin")))
      if (files.length < 8 && (await lstat(join(tree, "usr/bin", f))).isFile()) files.push(`usr/bin/${f}`);
  return files.every((f) => spawnSync("grub-fstest", [fs, "cmp", `/${f}`, join(tree, f)]).status === 0);
}

async function measure(set: OptionSet, trees: [string, string], epoch: number): Promise<Result> {
  const dir = join(work, "sets", set.name);
  await mkdir(dir, { recursive: true });
  const { built, seconds } =
    set.name === "as-built" ? { built: await asBuilt(dir), seconds: 0 } : await build(set, dir, trees, epoch);
  const [a, b] = built;
  const grub = await grubReads(b.fs, trees[1]);
  // The server's delta of a dm-verity root is of the file systems only (xdelta3-verity).
  const delta = join(dir, "v1-v2.xd3");
  run(xdelta3EncodeArgv(a.fs, b.fs, delta));
  const have = new Map<string, number>();
  for (const c of await chunksOf(a.root, a.rootBytes)) have.set(c.sha256, c.offset);
  const chunks = await chunksOf(b.root, b.rootBytes);
  const region = await regionsOf(b.root);
  const missing = { data: 0, metadata: 0, verity: 0 };
  for (const c of chunks) if (!have.has(c.sha256)) missing[region(c.offset)] += c.size;
  // As a device plans it: the dm-verity tree is computed there, only the file system's chunks count.
  const record = {
    algorithm: "sha256" as const,
    data_blocks: verityLayout(b.fsBytes).dataBlocks,
    root_hash: "",
  };
  const assembled = assembledChunks(chunks, computedTree(record, b.rootBytes));
  const plan = planChunkWork(assembled, [], (sha) => have.get(sha));
  const index = encodeChunkIndex(
    {
      schema: CHUNK_INDEX_SCHEMA,
      name: "EOS",
      architecture: "x86_64",
      version: "2",
      root_sha256: "0".repeat(64),
      data_bytes: b.rootBytes,
      chunker: DEFAULT_CHUNKER,
    },
    chunks,
  );
  return {
    set: set.name,
    options: [`-comp ${set.compression}`, ...set.options].join(" "),
    fs_bytes: b.fsBytes,
    as_built: seconds === 0,
    grub_reads: grub,
    root_bytes: b.rootBytes,
    chunk_bytes: plan.fetchBytes + index.length,
    new_chunk_bytes: missing.data + missing.metadata + missing.verity,
    new_chunks_by_region: missing,
    index_bytes: index.length,
    requests: plan.fetches.length,
    xdelta3_bytes: (await stat(delta)).size,
    mksquashfs_s: Math.round(seconds * 10) / 10,
  };
}

type Root = Awaited<ReturnType<typeof rootOf>>;
const roots = await Promise.all(pair.map((p) => rootOf(p as string)));
const [r1, r2] = roots as [Root, Root];
if (r1.epoch !== r2.epoch)
  console.error(
    `note: the pair was built with different epochs (${r1.epoch}, ${r2.epoch}); both are rebuilt with ${r2.epoch}`,
  );
// Shared between runs (and between benches run side by side, each with its own --work).
const treesDir = resolve(flag("--trees") ?? work);
const trees: [string, string] = [join(treesDir, "tree-v1"), join(treesDir, "tree-v2")];
await mkdir(work, { recursive: true });
await unpack(pair[0] as string, r1.range.offset, trees[0]);
await unpack(pair[1] as string, r2.range.offset, trees[1]);

/**
 * --subset a,b/c,d/e*: both trees reduced to those paths (hard links, so
 * owners, modes and xattrs stay): a smaller pair that still holds every file
 * the update changes, when the whole root takes too long to build per set.
 */
const subset = flag("--subset")?.split(",");
async function reduce(tree: string, out: string): Promise<string> {
  await rm(out, { recursive: true, force: true });
  await mkdir(out, { recursive: true });
  const paths: string[] = [];
  for (const entry of subset as string[]) {
    if (!entry.endsWith("*")) paths.push(entry);
    else {
      const parent = dirname(entry);
      const prefix = basename(entry).slice(0, -1);
      for (const f of await readdir(join(tree, parent)))
        if (f.startsWith(prefix)) paths.push(join(parent, f));
    }
  }
  const r = spawnSync("cp", ["-a", "-l", "--parents", "--", ...paths, out], { cwd: tree, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`cp --parents into ${out}: ${r.stderr}`);
  return out;
}
if (subset) {
  trees[0] = await reduce(trees[0], join(work, "subset-v1"));
  trees[1] = await reduce(trees[1], join(work, "subset-v2"));
}

const results: Result[] = [];
for (const set of sets) {
  const r = await measure(set, trees, r2.epoch);
  results.push(r);
  if (asJson) console.log(JSON.stringify(r));
  else console.error(`${set.name}: done (${JSON.stringify(r)})`);
}
if (!asJson) {
  const base = results.find((r) => r.set === "default") as Result;
  const kb = (n: number) => `${(n / 1000).toFixed(0)} KB`;
  const ratio = (x: number, y: number) => (x / y).toFixed(2);
  const of = subset ? ` reduced to ${subset.join(", ")}` : "";
  console.log(
    `bench/squashfs-options: ${pair.join(" → ")}${of}, epoch ${r2.epoch}; each set rebuilt from the unpacked trees ("as-built": the pair's own roots), ratios to "default" (${ROOT_SQUASHFS_OPTIONS.join(" ") || "no options"})`,
  );
  console.log(
    "set                | chunk path (ratio) | new chunks: data + metadata + verity | requests | xdelta3 (ratio)   | root (ratio)       | GRUB | mksquashfs v2",
  );
  for (const r of results) {
    const m = r.new_chunks_by_region;
    console.log(
      [
        r.set.padEnd(18),
        `${kb(r.chunk_bytes).padStart(8)} (${ratio(r.chunk_bytes, base.chunk_bytes)})`.padEnd(18),
        `${kb(r.new_chunk_bytes)}: ${kb(m.data)} + ${kb(m.metadata)} + ${kb(m.verity)}`.padEnd(36),
        String(r.requests).padStart(8),
        `${kb(r.xdelta3_bytes).padStart(8)} (${ratio(r.xdelta3_bytes, base.xdelta3_bytes)})`.padEnd(17),
        `${kb(r.root_bytes).padStart(9)} (${ratio(r.root_bytes, base.root_bytes)})`.padEnd(18),
        (r.grub_reads ? "yes" : "NO").padEnd(4),
        r.as_built ? "-" : `${r.mksquashfs_s} s`,
      ].join(" | "),
    );
  }
}
