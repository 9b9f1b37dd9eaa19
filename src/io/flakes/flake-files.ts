/**
 * Files of the flake registry, engine-neutral (podman now, firecracker
 * later): flakes.yml, NAME.yaml + NAME.d/, the host symlinks, instance id
 * files. Every path can be redirected with FLAKES_CONFIG.
 */
import { existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { lstat, mkdir, readFile, readlink, rename, rm, symlink, unlink } from "node:fs/promises";
import { homedir, userInfo } from "node:os";
import { dirname, join } from "node:path";
import { EosError } from "../../core/errors.ts";
import { fnv1a } from "../../core/fnv.ts";
import {
  DEFAULT_FLAKES_CONFIG_PATH,
  FLAKES_CONFIG_DEFAULTS,
  splitFragmentNames,
  type FlakeSource,
  type FlakesConfig,
} from "../../core/flakes/flake-config.ts";
import { sysPath, type Context } from "../context.ts";
import { atomicWriteFile } from "../files.ts";

export interface FlakesSetup {
  /** The flakes.yml that was read (it may not exist: then defaults apply). */
  configPath: string;
  configExists: boolean;
  config: FlakesConfig;
  user: boolean;
}

export function userFlakesConfigPath(env: NodeJS.ProcessEnv): string {
  return join(env.XDG_CONFIG_HOME ?? join(env.HOME ?? homedir(), ".config"), "flakes.yml");
}

/** FLAKES_CONFIG (if set) names the flakes.yml; otherwise /etc/flakes.yml, or ~/.config/flakes.yml in user mode. */
export function flakesConfigPath(ctx: Pick<Context, "env" | "root">, user: boolean): string {
  const explicit = ctx.env.FLAKES_CONFIG;
  if (explicit) return explicit;
  return user ? userFlakesConfigPath(ctx.env) : sysPath(ctx, DEFAULT_FLAKES_CONFIG_PATH);
}

/** Reads flakes.yml (missing: flake-pilot's defaults, except in user mode or when FLAKES_CONFIG names it). */
export async function loadFlakesSetup(
  ctx: Pick<Context, "env" | "root">,
  opts: { user?: boolean } = {},
): Promise<FlakesSetup> {
  const user = opts.user ?? false;
  const explicit = ctx.env.FLAKES_CONFIG;
  const configPath = flakesConfigPath(ctx, user);
  let text: string | undefined;
  try {
    text = readFileSync(configPath, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== "ENOENT")
      throw new EosError("CONFIG", `${configPath}: cannot read: ${code ?? String(error)}`);
    if (explicit) {
      throw new EosError("CONFIG", `FLAKES_CONFIG names ${configPath}, which does not exist`);
    }
    if (user) {
      throw new EosError("CONFIG", `${configPath} does not exist: user mode needs it`, {
        hint: "run: flake-ctl init --user",
      });
    }
  }
  let config: FlakesConfig = { ...FLAKES_CONFIG_DEFAULTS };
  if (text !== undefined) {
    const { parseFlakesConfig } = await import("../../core/flakes/flake-yaml.ts");
    config = parseFlakesConfig(text, configPath);
  }
  if (!explicit && !user && ctx.root !== "/") {
    // Registering into an image tree: the directories live under the root too.
    config.flakesDir = sysPath(ctx, config.flakesDir);
  }
  return { configPath, configExists: text !== undefined, config, user };
}

// ---------------------------------------------------------------- launch cache

/**
 * The pilots keep the parsed, merged and checked flake (and flakes.yml) as
 * JSON, valid while flakes.yml, NAME.yaml, NAME.d/ and every fragment keep
 * their size, mtime and inode. A hit costs a few stat calls instead of the
 * YAML library's start-up. The cache lives in a directory only this user can
 * write (/run/eos-flakes for root, $XDG_RUNTIME_DIR/eos-flakes otherwise) and
 * is not used if that directory is not exclusively ours. EOS_FLAKES_CACHE_DIR
 * points it elsewhere (tests), EOS_FLAKES_NO_CACHE=1 turns it off.
 */
function cacheDir(ctx: Pick<Context, "env" | "root">): string | undefined {
  if (ctx.root !== "/" || ctx.env.EOS_FLAKES_NO_CACHE) return undefined;
  if (ctx.env.EOS_FLAKES_CACHE_DIR) return ctx.env.EOS_FLAKES_CACHE_DIR;
  const uid = process.getuid?.();
  if (uid === 0) return "/run/eos-flakes";
  return ctx.env.XDG_RUNTIME_DIR ? join(ctx.env.XDG_RUNTIME_DIR, "eos-flakes") : undefined;
}

function stampOf(path: string): string {
  const st = statSync(path, { throwIfNoEntry: false });
  return st ? `${st.mtimeMs}:${st.size}:${st.ino}` : "missing";
}

function dirIsOurs(dir: string): boolean {
  const st = statSync(dir, { throwIfNoEntry: false });
  return Boolean(st?.isDirectory() && st.uid === process.getuid?.() && (st.mode & 0o077) === 0);
}

interface CacheEntry<T> {
  version: 1;
  configPath: string;
  stamps: Record<string, string>;
  setup: FlakesSetup;
  value: T;
  /** What reading the files warned about, said again on every cached load. */
  warnings?: string[];
}

/**
 * Loads flake NAME through `parse` (which gets NAME.yaml + NAME.d sources),
 * from the cache when nothing changed. `kind` keeps engines apart.
 */
export async function loadFlakeCached<T>(
  ctx: Pick<Context, "env" | "root">,
  name: string,
  kind: string,
  parse: (sources: FlakeSource[]) => Promise<T>,
  opts: { user?: boolean; warn?: (line: string) => void } = {},
): Promise<{ setup: FlakesSetup; value: T }> {
  const user = opts.user ?? false;
  const configPath = flakesConfigPath(ctx, user);
  const dir = cacheDir(ctx);
  const file = dir ? join(dir, `${kind}-${name}-${fnv1a(`${configPath}\0${user}`)}.json`) : undefined;
  if (file && dir && dirIsOurs(dir)) {
    try {
      const entry = JSON.parse(readFileSync(file, "utf8")) as CacheEntry<T>;
      if (
        entry.version === 1 &&
        entry.configPath === configPath &&
        Object.entries(entry.stamps).every(([path, stamp]) => stampOf(path) === stamp)
      ) {
        for (const line of entry.warnings ?? []) opts.warn?.(line);
        return { setup: entry.setup, value: entry.value };
      }
    } catch {
      // no entry, or a broken one: parse the files
    }
  }
  const setup = await loadFlakesSetup(ctx, { user });
  const stamps: Record<string, string> = { [configPath]: stampOf(configPath) };
  const warnings: string[] = [];
  const sources = readFlakeSources(setup, name, (line) => {
    warnings.push(line);
    opts.warn?.(line);
  });
  stamps[flakeFragmentDir(setup, name)] = stampOf(flakeFragmentDir(setup, name));
  for (const source of sources) stamps[source.file] = stampOf(source.file);
  const value = await parse(sources);
  if (file && dir) {
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      if (dirIsOurs(dir)) {
        const entry: CacheEntry<T> = { version: 1, configPath, stamps, setup, value, warnings };
        await writeFileAtomic(file, JSON.stringify(entry), 0o600);
      }
    } catch {
      // a cache is optional
    }
  }
  return { setup, value };
}

export function flakeFilePath(setup: FlakesSetup, name: string): string {
  return join(setup.config.flakesDir, `${name}.yaml`);
}

export function flakeFragmentDir(setup: FlakesSetup, name: string): string {
  return join(setup.config.flakesDir, `${name}.d`);
}

/**
 * NAME.yaml, then NAME.d/*.yaml and *.yml in sorted order. NOT_FOUND if
 * NAME.yaml is missing. Other files in NAME.d are not read: `warn` gets one
 * line about each (flake-pilot read every file there).
 */
export function readFlakeSources(
  setup: FlakesSetup,
  name: string,
  warn?: (line: string) => void,
): FlakeSource[] {
  const file = flakeFilePath(setup, name);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") {
      throw new EosError("NOT_FOUND", `no flake ${name} registered: ${file} does not exist`, {
        hint: `register it with flake-ctl podman register --app /usr/bin/${name} --container IMAGE`,
      });
    }
    throw new EosError("CONFIG", `${file}: cannot read: ${code ?? String(error)}`);
  }
  const sources: FlakeSource[] = [{ file, text }];
  const dir = flakeFragmentDir(setup, name);
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    names = [];
  }
  const { read, ignored } = splitFragmentNames(names);
  for (const other of ignored) {
    warn?.(`${join(dir, other)} is not read: only *.yaml and *.yml files in ${name}.d are flake fragments`);
  }
  for (const fragment of read) {
    const path = join(dir, fragment);
    if (!statSync(path, { throwIfNoEntry: false })?.isFile()) continue;
    sources.push({ file: path, text: readFileSync(path, "utf8") });
  }
  return sources;
}

/** Names of registered flakes (NAME.yaml files), sorted. */
export async function listFlakeNames(setup: FlakesSetup): Promise<string[]> {
  const { readdir } = await import("node:fs/promises");
  const entries = await readdir(setup.config.flakesDir).catch(() => [] as string[]);
  return entries
    .filter((e) => e.endsWith(".yaml") && !e.startsWith("."))
    .map((e) => e.slice(0, -".yaml".length))
    .sort();
}

export function pathExistsSync(path: string): boolean {
  return existsSync(path);
}

/** What is at a path, without following a final symlink. */
export async function pathKind(path: string): Promise<"missing" | "symlink" | "file" | "dir" | "other"> {
  const st = await lstat(path).catch(() => undefined);
  if (!st) return "missing";
  if (st.isSymbolicLink()) return "symlink";
  if (st.isFile()) return "file";
  if (st.isDirectory()) return "dir";
  return "other";
}

export async function readLinkOrUndefined(path: string): Promise<string | undefined> {
  return readlink(path).catch(() => undefined);
}

/** Crash-safe replace: io/files.ts's atomicWriteFile (which stays free of node:crypto for the launch path). */
export function writeFileAtomic(path: string, data: string, mode = 0o644): Promise<void> {
  return atomicWriteFile(path, data, mode);
}

export async function writeFlakeFile(path: string, text: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await writeFileAtomic(path, text, 0o644);
}

/** Replaces whatever is at `path` with a symlink to `target` (via a temp name + rename). */
export async function placeSymlink(path: string, target: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const temp = join(dirname(path), `.${path.split("/").pop() ?? "link"}.tmp-${process.pid}`);
  await unlink(temp).catch(() => undefined);
  await symlink(target, temp);
  try {
    await rename(temp, path);
  } catch (error) {
    await unlink(temp).catch(() => undefined);
    throw error;
  }
}

export async function removePath(path: string, opts: { recursive?: boolean } = {}): Promise<void> {
  await rm(path, { force: true, recursive: opts.recursive ?? false });
}

export async function ensureDir(path: string, mode = 0o755): Promise<void> {
  await mkdir(path, { recursive: true, mode });
}

export async function readTextFile(path: string): Promise<string | undefined> {
  return readFile(path, "utf8").catch(() => undefined);
}

/**
 * `flake-ctl init`: the flake directories, and with `user` (unless
 * FLAKES_CONFIG names another file) a ~/.config/flakes.yml whose directories
 * the user can write. `force` writes the flakes.yml anew even if it exists
 * (user: ~/.config/flakes.yml; system: FLAKES_CONFIG or /etc/flakes.yml,
 * with flake-pilot's defaults). Returns what it made.
 */
export async function initFlakes(
  ctx: Pick<Context, "env" | "root">,
  user: boolean,
  force = false,
): Promise<string[]> {
  const made: string[] = [];
  if (force && !user) {
    // --force: flakes.yml (FLAKES_CONFIG or /etc/flakes.yml) written anew with flake-pilot's defaults.
    const path = flakesConfigPath(ctx, false);
    const { renderYaml } = await import("../../core/flakes/flake-yaml.ts");
    const d = FLAKES_CONFIG_DEFAULTS;
    await ensureDir(dirname(path));
    await atomicWriteFile(
      path,
      renderYaml({
        generic: {
          flakes_dir: d.flakesDir,
          podman_ids_dir: d.podmanIdsDir,
          firecracker_ids_dir: d.firecrackerIdsDir,
          podman_storage_conf: d.podmanStorageConf,
        },
      }),
    );
    made.push(`wrote ${path}`);
  }
  if (user && !ctx.env.FLAKES_CONFIG) {
    const path = userFlakesConfigPath(ctx.env);
    if (force || !existsSync(path)) {
      const { renderYaml } = await import("../../core/flakes/flake-yaml.ts");
      const home = ctx.env.HOME ?? userInfo().homedir;
      const data = join(ctx.env.XDG_DATA_HOME ?? join(home, ".local", "share"), "flakes");
      const ids = join(ctx.env.XDG_RUNTIME_DIR ?? `/tmp/flakes-${userInfo().uid}`, "flakes");
      await ensureDir(dirname(path));
      await atomicWriteFile(
        path,
        renderYaml({ generic: { flakes_dir: data, podman_ids_dir: ids, firecracker_ids_dir: ids } }),
      );
      made.push(`wrote ${path}`);
    }
  }
  const setup = await loadFlakesSetup(ctx, { user });
  for (const dir of [setup.config.flakesDir, setup.config.podmanIdsDir]) {
    await ensureDir(dir);
    made.push(`ready: ${dir}`);
  }
  return made;
}
