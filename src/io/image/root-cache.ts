/**
 * The base-root cache: one directory per key under EOS_CACHE_DIR (default
 * /var/cache/eos/roots, outside any clone), holding `tree/` (the root as
 * mmdebstrap left it), `boot/` (the boot loader .debs fetched with it) and
 * `meta.json` (the key and its inputs). An entry is built in NAME.tmp-PID
 * and renamed into place only when complete; a lock per key makes a second
 * writer wait and then use the first one's entry (two waiters taking over a
 * crashed writer's lock at the same instant could both build: the first
 * rename wins, the other result is dropped). An entry without a
 * matching meta.json (a crash, a partial copy, a hand edit) is not used:
 * it is removed and built again.
 */
import {
  link,
  mkdir,
  readFile,
  readdir,
  rename,
  rm,
  stat,
  unlink,
  utimes,
  writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { EosError } from "../../core/errors.ts";
import { parseMountInfo } from "../../core/image/flash.ts";
import { baseRootEntryName, baseRootKey, type BaseRootInputs } from "../../core/image/root-cache.ts";
import { pidAlive, type ProcessRunner } from "../process.ts";

export const DEFAULT_ROOT_CACHE = "/var/cache/eos/roots";

export function rootCacheDir(env: NodeJS.ProcessEnv): string {
  return env.EOS_CACHE_DIR && env.EOS_CACHE_DIR.length > 0 ? env.EOS_CACHE_DIR : DEFAULT_ROOT_CACHE;
}

/**
 * Entries kept per architecture and suite (EOS_CACHE_KEEP): each is a whole
 * root, most of a GB. Four: the demo's v1 and v2 (another package list) and
 * the tests' own epoch are three keys of one archive state, plus one spare.
 */
export const DEFAULT_CACHE_KEEP = 4;

export function rootCacheKeep(env: NodeJS.ProcessEnv): number {
  const value = env.EOS_CACHE_KEEP;
  if (value === undefined || value === "") return DEFAULT_CACHE_KEEP;
  if (!/^\d+$/.test(value) || Number(value) < 1)
    throw new EosError("CONFIG", `EOS_CACHE_KEEP=${value}: must be a whole number of at least 1`);
  return Number(value);
}

/**
 * An entry used within this time is never pruned: a build that found it may
 * still be copying its tree (a copy takes well under a minute).
 */
const IN_USE_MS = 3600_000;

export interface RootCacheEntry {
  key: string;
  dir: string;
  tree: string;
  boot: string;
}

interface Meta {
  key: string;
  inputs: BaseRootInputs;
  created: string;
  seconds: number;
}

/** Paths mounted at or below `dir` (mmdebstrap mounts /proc, /sys, /dev in the tree it builds). */
async function mountsBelow(dir: string): Promise<string[]> {
  const text = await readFile("/proc/self/mountinfo", "utf8").catch(() => "");
  return parseMountInfo(text)
    .map((m) => m.mountPoint)
    .filter((m) => m === dir || m.startsWith(`${dir}/`));
}

/** rm -r that refuses to walk into a mount (a leftover /proc or /dev bind inside a failed tree). */
export async function removeTree(dir: string): Promise<void> {
  const mounts = await mountsBelow(dir);
  if (mounts.length > 0)
    throw new EosError("BUILD", `${dir} still has mounts inside (${mounts.slice(0, 3).join(", ")})`, {
      hint: `unmount them first: for m in $(mount | grep ${dir} | awk '{print $3}' | sort -r); do umount -l $m; done`,
    });
  await rm(dir, { recursive: true, force: true });
}

export class RootCache {
  constructor(
    readonly dir: string,
    private readonly proc: ProcessRunner,
    private readonly options: {
      lockWaitMs?: number;
      pollMs?: number;
      keep?: number;
      now?: () => number;
    } = {},
  ) {}

  private paths(name: string, key: string): RootCacheEntry {
    const dir = join(this.dir, name);
    return { key, dir, tree: join(dir, "tree"), boot: join(dir, "boot") };
  }

  /** The complete entry for these inputs, or undefined. */
  async lookup(inputs: BaseRootInputs): Promise<RootCacheEntry | undefined> {
    const key = baseRootKey(inputs);
    const entry = this.paths(baseRootEntryName(inputs, key), key);
    const meta = await readFile(join(entry.dir, "meta.json"), "utf8").catch(() => undefined);
    if (meta === undefined) return undefined;
    try {
      const parsed = JSON.parse(meta) as Partial<Meta>;
      if (parsed.key !== key) return undefined;
      // The entry's mtime is its last use: pruning keeps the recently used ones.
      const now = new Date(this.options.now?.() ?? Date.now());
      await utimes(entry.dir, now, now).catch(() => undefined);
      return entry;
    } catch {
      return undefined;
    }
  }

  /**
   * The key's lock file, created whole with its owner's pid (link of a
   * finished file: a reader never sees it empty). A live owner, this process
   * included, is waited for; a dead one's lock is taken over.
   */
  private async lock(name: string): Promise<() => Promise<void>> {
    const path = join(this.dir, `${name}.lock`);
    const mine = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}`;
    await writeFile(mine, `${process.pid}\n`);
    const deadline = Date.now() + (this.options.lockWaitMs ?? 3 * 3600_000);
    try {
      for (;;) {
        try {
          await link(mine, path);
          return () => unlink(path).catch(() => undefined);
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
        }
        const owner = Number((await readFile(path, "utf8").catch(() => "")).trim());
        if (Number.isInteger(owner) && owner > 0 && pidAlive(owner)) {
          if (Date.now() > deadline)
            throw new EosError("LOCKED", `the cached root ${name} is being built by pid ${owner}`, {
              hint: `wait for it, or build with --no-cache`,
            });
          await sleep(this.options.pollMs ?? 2000);
        } else {
          await unlink(path).catch(() => undefined);
        }
      }
    } finally {
      await unlink(mine).catch(() => undefined);
    }
  }

  /**
   * The entry for these inputs: the existing one, or one made by `build`
   * (which fills `tree` and `boot` of a fresh directory). `built` says which.
   */
  async obtain(
    inputs: BaseRootInputs,
    build: (entry: RootCacheEntry) => Promise<void>,
  ): Promise<{ entry: RootCacheEntry; built: boolean }> {
    const found = await this.lookup(inputs);
    if (found) return { entry: found, built: false };
    await mkdir(this.dir, { recursive: true, mode: 0o755 });
    const key = baseRootKey(inputs);
    const name = baseRootEntryName(inputs, key);
    const release = await this.lock(name);
    try {
      // Another writer may have finished while this one waited for the lock.
      const raced = await this.lookup(inputs);
      if (raced) return { entry: raced, built: false };
      // Leftovers of writers that died: under the lock nobody else builds this key.
      for (const n of await readdir(this.dir))
        if (n === name || n.startsWith(`${name}.tmp-`)) await removeTree(join(this.dir, n));
      const tmp = this.paths(`${name}.tmp-${process.pid}`, key);
      await mkdir(tmp.boot, { recursive: true });
      await mkdir(tmp.tree, { recursive: true });
      const t0 = performance.now();
      try {
        await build(tmp);
      } catch (error) {
        await removeTree(tmp.dir).catch(() => undefined);
        throw error;
      }
      const meta: Meta = {
        key,
        inputs,
        created: new Date().toISOString(),
        seconds: Math.round((performance.now() - t0) / 100) / 10,
      };
      await writeFile(join(tmp.dir, "meta.json"), `${JSON.stringify(meta, null, 2)}\n`);
      // Flush the tree before it becomes visible: a power cut must not leave a complete-looking entry.
      await this.proc.run(["sync", "-f", tmp.dir], { code: "BUILD" });
      const entry = this.paths(name, key);
      try {
        await rename(tmp.dir, entry.dir);
      } catch (error) {
        // A writer that took over the same dead lock finished first: keep its entry.
        const code = (error as NodeJS.ErrnoException).code;
        const other = code === "ENOTEMPTY" || code === "EEXIST" ? await this.lookup(inputs) : undefined;
        if (!other) throw error;
        await removeTree(tmp.dir);
        return { entry: other, built: false };
      }
      await this.prune(name);
      return { entry, built: true };
    } finally {
      await release();
    }
  }

  /**
   * After a new entry of an architecture and suite: removes that family's
   * entries beyond the `keep` most recently used, except any used within the
   * last hour. Other families are left alone. Returns the removed names.
   */
  async prune(fresh: string): Promise<string[]> {
    const family = fresh.slice(0, fresh.lastIndexOf("-") + 1);
    const now = this.options.now?.() ?? Date.now();
    const entries: Array<{ name: string; used: number }> = [];
    for (const name of await readdir(this.dir)) {
      if (!name.startsWith(family) || name.includes(".tmp-") || name.endsWith(".lock")) continue;
      if (name.slice(family.length).includes("-")) continue;
      const info = await stat(join(this.dir, name)).catch(() => undefined);
      if (info?.isDirectory()) entries.push({ name, used: name === fresh ? now : info.mtimeMs });
    }
    entries.sort((a, b) => b.used - a.used);
    const removed: string[] = [];
    for (const old of entries.slice(this.options.keep ?? DEFAULT_CACHE_KEEP)) {
      if (now - old.used < IN_USE_MS) continue;
      // Out of sight first (a lookup now misses it), then away.
      const doomed = join(this.dir, `${old.name}.tmp-prune-${process.pid}`);
      await rename(join(this.dir, old.name), doomed);
      await removeTree(doomed);
      removed.push(old.name);
    }
    return removed;
  }

  /** Copies an entry's tree to `tree` (which must not exist): owners, modes, links, xattrs, devices. */
  async restore(entry: RootCacheEntry, tree: string): Promise<void> {
    await mkdir(tree, { recursive: true });
    await this.proc.run(["cp", "-a", "--reflink=auto", "--", `${entry.tree}/.`, `${tree}/`], {
      code: "BUILD",
      what: `copying the cached root ${entry.dir}`,
    });
  }
}
