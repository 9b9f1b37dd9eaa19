/**
 * The base-root cache on a temporary directory: entries appear only when
 * complete, concurrent writers build once, damaged or incomplete entries are
 * rebuilt, and a restored tree keeps owners, modes, links and xattrs.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import {
  chown,
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  readdir,
  readlink,
  rm,
  stat,
  symlink,
  writeFile,
  link,
  utimes,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { baseRootEntryName, baseRootKey } from "../../src/core/image/root-cache.ts";
import {
  DEFAULT_CACHE_KEEP,
  DEFAULT_ROOT_CACHE,
  RootCache,
  rootCacheDir,
  rootCacheKeep,
} from "../../src/io/image/root-cache.ts";
import { systemRunner } from "../../src/io/process.ts";
import { fixedInputs } from "../helpers/root-cache-inputs.ts";

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "eos-root-cache-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function writer(
  cacheDir: string,
  countFile: string,
  buildMs: number,
): Promise<{ dir: string; built: boolean }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "test/helpers/root-cache-writer.ts", cacheDir, countFile, String(buildMs)],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.once("error", reject);
    child.once("close", (code) =>
      code === 0
        ? resolve(JSON.parse(out) as { dir: string; built: boolean })
        : reject(new Error(`writer exit ${code}`)),
    );
  });
}

test("EOS_CACHE_DIR overrides /var/cache/eos/roots", () => {
  assert.equal(rootCacheDir({}), DEFAULT_ROOT_CACHE);
  assert.equal(DEFAULT_ROOT_CACHE, "/var/cache/eos/roots");
  assert.equal(rootCacheDir({ EOS_CACHE_DIR: "/srv/eos-cache" }), "/srv/eos-cache");
});

test("a miss builds into a temporary directory and renames it; the next lookup hits", async (t) => {
  const dir = await tempDir(t);
  const cache = new RootCache(dir, systemRunner());
  const inputs = fixedInputs();
  assert.equal(await cache.lookup(inputs), undefined);
  let sawTmp = "";
  const first = await cache.obtain(inputs, async (fresh) => {
    sawTmp = fresh.dir;
    await writeFile(join(fresh.tree, "x"), "1");
    // Not visible while it is being built.
    assert.equal(await cache.lookup(inputs), undefined);
  });
  assert.equal(first.built, true);
  assert.match(sawTmp, /\.tmp-\d+$/);
  assert.equal(first.entry.dir, join(dir, baseRootEntryName(inputs, baseRootKey(inputs))));
  const meta = JSON.parse(await readFile(join(first.entry.dir, "meta.json"), "utf8")) as { key: string };
  assert.equal(meta.key, baseRootKey(inputs));
  assert.deepEqual((await readdir(dir)).sort(), [baseRootEntryName(inputs, baseRootKey(inputs))]);
  const second = await cache.obtain(inputs, () => assert.fail("a hit must not build"));
  assert.equal(second.built, false);
  assert.equal(second.entry.dir, first.entry.dir);
  // Other inputs (a new archive state) are another entry.
  assert.equal(await cache.lookup(fixedInputs("1".repeat(64))), undefined);
});

test("two writers of one key at once: one builds, the other waits and uses its entry", async (t) => {
  const dir = await tempDir(t);
  const count = join(dir, "..", `${dir.split("/").pop() ?? "x"}.count`);
  t.after(() => rm(count, { force: true }));
  const [a, b] = await Promise.all([writer(dir, count, 1500), writer(dir, count, 1500)]);
  assert.equal((await readFile(count, "utf8")).trim().split("\n").length, 1, "exactly one build");
  assert.equal(a.dir, b.dir);
  assert.deepEqual([a.built, b.built].sort(), [false, true]);
  assert.ok(!(await readdir(dir)).some((n) => n.includes(".tmp-") || n.endsWith(".lock")));
});

test("an entry without meta.json, with a damaged one, or a dead writer's leftovers is rebuilt", async (t) => {
  const dir = await tempDir(t);
  const cache = new RootCache(dir, systemRunner());
  const inputs = fixedInputs();
  const name = baseRootEntryName(inputs, baseRootKey(inputs));
  const rebuilds = async (): Promise<boolean> => {
    let built = false;
    const r = await cache.obtain(inputs, async (fresh) => {
      built = true;
      await writeFile(join(fresh.tree, "x"), "rebuilt");
    });
    assert.equal(await readFile(join(r.entry.tree, "x"), "utf8"), "rebuilt");
    return built;
  };
  // Incomplete: renamed without meta.json (cannot happen through obtain; a hand copy can).
  await mkdir(join(dir, name, "tree"), { recursive: true });
  await writeFile(join(dir, name, "tree", "x"), "partial");
  assert.equal(await rebuilds(), true);
  // Damaged meta.json, then one for another key.
  await writeFile(join(dir, name, "meta.json"), "{not json");
  assert.equal(await rebuilds(), true);
  await writeFile(join(dir, name, "meta.json"), JSON.stringify({ key: "f".repeat(64) }));
  assert.equal(await rebuilds(), true);
  // A writer that died half-way left NAME.tmp-PID behind: gone after the next build.
  await mkdir(join(dir, `${name}.tmp-999999`, "tree"), { recursive: true });
  await rm(join(dir, name, "meta.json"));
  assert.equal(await rebuilds(), true);
  assert.deepEqual(await readdir(dir), [name]);
  // A failing build leaves nothing that looks like an entry.
  await rm(join(dir, name, "meta.json"));
  await assert.rejects(
    cache.obtain(inputs, () => Promise.reject(new Error("mmdebstrap failed"))),
    /mmdebstrap failed/,
  );
  assert.equal(await cache.lookup(inputs), undefined);
  assert.ok(!(await readdir(dir)).some((n) => n.includes(".tmp-")));
});

test("restore keeps owners, modes, symlinks, hard links, xattrs and device nodes", async (t) => {
  if (process.getuid?.() !== 0) return t.skip("needs root (owners, device nodes)");
  const dir = await tempDir(t);
  const cache = new RootCache(join(dir, "cache"), systemRunner());
  const { entry } = await cache.obtain(fixedInputs(), async (fresh) => {
    const tr = fresh.tree;
    await mkdir(join(tr, "usr/bin"), { recursive: true });
    await writeFile(join(tr, "usr/bin/ping"), "elf", { mode: 0o755 });
    assert.equal(spawnSync("setcap", ["cap_net_raw+ep", join(tr, "usr/bin/ping")]).status, 0);
    await writeFile(join(tr, "shadow"), "root:*:19518:0:99999:7:::\n", { mode: 0o640 });
    await chown(join(tr, "shadow"), 0, 42);
    await symlink("usr/bin", join(tr, "bin"));
    await link(join(tr, "usr/bin/ping"), join(tr, "usr/bin/ping-hard"));
    assert.equal(spawnSync("mknod", [join(tr, "null"), "c", "1", "3"]).status, 0);
  });
  const tree = join(dir, "tree");
  await cache.restore(entry, tree);
  const cap = spawnSync("getcap", [join(tree, "usr/bin/ping")]).stdout.toString();
  assert.match(cap, /cap_net_raw[=+]ep/);
  const shadow = await stat(join(tree, "shadow"));
  assert.equal(shadow.mode & 0o7777, 0o640);
  assert.equal(shadow.gid, 42);
  assert.equal(await readlink(join(tree, "bin")), "usr/bin");
  assert.equal(
    (await stat(join(tree, "usr/bin/ping"))).ino,
    (await stat(join(tree, "usr/bin/ping-hard"))).ino,
  );
  assert.ok((await lstat(join(tree, "null"))).isCharacterDevice());
});

test("a new entry prunes its architecture and suite to the most recently used, never one in use", async (t) => {
  const dir = await tempDir(t);
  const hour = 3600_000;
  const now = Date.parse("2026-12-01T12:00:00Z");
  const cache = new RootCache(dir, systemRunner(), { keep: 1, now: () => now });
  const make = async (name: string, usedHoursAgo: number) => {
    await mkdir(join(dir, name, "tree"), { recursive: true });
    await writeFile(join(dir, name, "meta.json"), "{}");
    const when = new Date(now - usedHoursAgo * hour);
    await utimes(join(dir, name), when, when);
  };
  await make("x86_64-bookworm-aaaaaaaaaaaaaaaaaaaaaaaa", 48);
  await make("x86_64-bookworm-bbbbbbbbbbbbbbbbbbbbbbbb", 24);
  await make("x86_64-bookworm-cccccccccccccccccccccccc", 72);
  await make("x86_64-bookworm-dddddddddddddddddddddddd", 0.5); // a build may still be copying it
  await make("aarch64-bookworm-eeeeeeeeeeeeeeeeeeeeeeee", 100); // another family
  await make("x86_64-trixie-ffffffffffffffffffffffff", 100);
  const inputs = fixedInputs("2".repeat(64));
  const name = baseRootEntryName(inputs, baseRootKey(inputs));
  const { built } = await cache.obtain(inputs, async (fresh) => writeFile(join(fresh.tree, "x"), "1"));
  assert.equal(built, true);
  assert.deepEqual(
    (await readdir(dir)).sort(),
    [
      "aarch64-bookworm-eeeeeeeeeeeeeeeeeeeeeeee",
      name,
      "x86_64-bookworm-dddddddddddddddddddddddd",
      "x86_64-trixie-ffffffffffffffffffffffff",
    ].sort(),
  );
  // A hit marks its entry used (its mtime), which is what pruning goes by.
  const old = new Date(now - 30 * hour);
  await utimes(join(dir, name), old, old);
  const later = new RootCache(dir, systemRunner(), { keep: 1, now: () => now + hour });
  assert.ok(await later.lookup(inputs));
  assert.equal((await stat(join(dir, name))).mtimeMs, now + hour);
});

test("EOS_CACHE_KEEP: a whole number of at least 1, named when it is not", () => {
  assert.equal(rootCacheKeep({}), DEFAULT_CACHE_KEEP);
  assert.equal(rootCacheKeep({ EOS_CACHE_KEEP: "7" }), 7);
  assert.throws(() => rootCacheKeep({ EOS_CACHE_KEEP: "0" }), /EOS_CACHE_KEEP=0: must be a whole number/);
  assert.throws(() => rootCacheKeep({ EOS_CACHE_KEEP: "two" }), /EOS_CACHE_KEEP=two/);
});
