/**
 * Registering and removing a flake, for either engine: what is refused
 * (another program at --app, another flake of the same name, a link that is
 * not a pilot's), the files and the link written as one step with undo, and
 * the read-only view of what is registered that `list` and `show` print.
 */
import { realpath } from "node:fs/promises";
import { dirname, join } from "node:path";
import { EosError, errorMessage } from "../../core/errors.ts";
import type { Context } from "../context.ts";
import {
  assertFlakeName,
  assertHostPath,
  baseName,
  deepMerge,
  scalarString,
} from "../../core/flakes/flake-config.ts";
import { parseYamlMapping } from "../../core/flakes/flake-yaml.ts";
import {
  ensureDir,
  flakeFilePath,
  flakeFragmentDir,
  listFlakeNames,
  pathKind,
  readFlakeSources,
  readLinkOrUndefined,
  readTextFile,
  removePath,
  writeFlakeFile,
  placeSymlink,
  type FlakesSetup,
} from "./flake-files.ts";

export type FlakeEngine = "podman" | "firecracker";

/** `flake-ctl ENGINE remove --app APP [--force]` for one engine. */
export type FlakeRemover = (
  ctx: Context,
  setup: FlakesSetup,
  app: string,
  force: boolean,
) => Promise<{ name: string; removed: boolean }>;
const SECTION: Record<FlakeEngine, "container" | "vm"> = { podman: "container", firecracker: "vm" };

/**
 * What a new flake's link points at: the pilot flakes.yml names
 * (`podman_pilot` / `firecracker_pilot`), or, when that is not installed
 * (EOS run from a checkout or an unpacked bundle), the pilot that ships
 * beside the running flake-ctl. Neither: refused, so no link is made that
 * every call would fail on (exit 127).
 */
export async function resolvePilot(
  setup: FlakesSetup,
  engine: FlakeEngine,
  argv0: string,
): Promise<{ pilot: string; beside: boolean }> {
  const configured = engine === "podman" ? setup.config.podmanPilot : setup.config.firecrackerPilot;
  if ((await pathKind(configured)) !== "missing") return { pilot: configured, beside: false };
  const program = `${engine}-pilot`;
  const self = argv0 ? await realpath(argv0).catch(() => undefined) : undefined;
  if (self) {
    for (const candidate of [program, `${program}.mjs`]) {
      const path = join(dirname(self), candidate);
      if ((await pathKind(path)) === "file") return { pilot: path, beside: true };
    }
  }
  const key = engine === "podman" ? "podman_pilot" : "firecracker_pilot";
  throw new EosError("NOT_FOUND", `the pilot ${configured} does not exist, so the flake could not start`, {
    hint: `install EOS's ${program} there, or set generic.${key} in ${setup.configPath} to where it is`,
  });
}

/** Is `target` (a link's target) one of our pilots, or an older install's? */
export function isPilotLink(target: string | undefined, setup: FlakesSetup): boolean {
  if (target === undefined) return false;
  const name = (target.split("/").pop() ?? target).replace(/\.(mjs|js)$/, "");
  return (
    target === setup.config.podmanPilot ||
    target === setup.config.firecrackerPilot ||
    name === "podman-pilot" ||
    name === "firecracker-pilot"
  );
}

function get(data: unknown, path: string[]): unknown {
  let cur = data;
  for (const key of path) {
    if (typeof cur !== "object" || cur === null) return undefined;
    cur = (cur as Record<string, unknown>)[key];
  }
  return cur;
}

/** The merged NAME.yaml + NAME.d of a flake as plain data (throws on unreadable files). */
function mergedFlake(setup: FlakesSetup, name: string): { merged: unknown; fragments: string[] } {
  const sources = readFlakeSources(setup, name);
  let merged: unknown = {};
  for (const s of sources) merged = deepMerge(merged, parseYamlMapping(s.text, s.file));
  return { merged, fragments: sources.slice(1).map((s) => s.file) };
}

export interface FlakeSummary {
  name: string;
  engine: FlakeEngine | "unknown";
  image: string | null;
  host_app_path: string | null;
  target_app_path: string | null;
  base: string | null;
  file: string;
  fragments?: string[];
  error?: string;
}

/** What `list` and `show` print for one flake; never throws (a broken flake says why). */
export function describeFlake(setup: FlakesSetup, name: string): FlakeSummary {
  const file = flakeFilePath(setup, name);
  try {
    const { merged, fragments } = mergedFlake(setup, name);
    const engine: FlakeSummary["engine"] = get(merged, ["container"])
      ? "podman"
      : get(merged, ["vm"])
        ? "firecracker"
        : "unknown";
    const section = (get(merged, [engine === "podman" ? "container" : "vm"]) ?? {}) as Record<
      string,
      unknown
    >;
    return {
      name,
      engine,
      image: scalarString(section.name) ?? null,
      host_app_path: scalarString(section.host_app_path) ?? null,
      target_app_path: scalarString(section.target_app_path) ?? null,
      base: scalarString(section.base_container ?? section.base_vm) ?? null,
      file,
      fragments,
    };
  } catch (error) {
    return {
      name,
      engine: "unknown",
      image: null,
      host_app_path: null,
      target_app_path: null,
      base: null,
      file,
      error: errorMessage(error),
    };
  }
}

/** Registered flakes, optionally of one engine and one image. */
export async function listFlakes(
  setup: FlakesSetup,
  filter: { engine?: FlakeEngine; image?: string } = {},
): Promise<FlakeSummary[]> {
  return (await listFlakeNames(setup))
    .map((n) => describeFlake(setup, n))
    .filter((d) => filter.engine === undefined || d.engine === filter.engine)
    .filter((d) => filter.image === undefined || d.image === filter.image);
}

/**
 * Refuses to replace anything at `app` (another program, or a flake already
 * registered there: "App path … already exists", as flake-pilot), and a
 * flake of the same name registered for another app. `--force` replaces both.
 */
export async function checkRegistrable(
  setup: FlakesSetup,
  name: string,
  app: string,
  engine: FlakeEngine,
  force: boolean,
): Promise<void> {
  if (force) return;
  const kind = await pathKind(app);
  const linkTarget = kind === "symlink" ? await readLinkOrUndefined(app) : undefined;
  if (kind !== "missing") {
    // As flake-pilot: whatever is there (another program, or this or another flake) stays unless --force.
    const flake = isPilotLink(linkTarget, setup);
    throw new EosError(
      "REFUSED",
      `App path ${app} already exists (${flake ? "a registered flake" : "not a flake"})`,
      {
        hint: flake
          ? `remove it first (flake-ctl ${engine} remove --app ${app}), or pass --force to replace it`
          : "choose another --app, or pass --force to replace it",
      },
    );
  }
  const file = flakeFilePath(setup, name);
  const previous = await readTextFile(file);
  if (previous === undefined) return;
  let other: unknown;
  try {
    const data = parseYamlMapping(previous, file);
    other = get(data, ["container", "host_app_path"]) ?? get(data, ["vm", "host_app_path"]);
  } catch {
    other = undefined;
  }
  if (other !== undefined && other !== app) {
    throw new EosError("REFUSED", `flake ${name} is already registered for ${String(other)} (${file})`, {
      hint: `remove it first (flake-ctl ${engine} remove --app …) or pass --force`,
    });
  }
}

/**
 * Registration's last step for any kind of flake: the flake file, its
 * NAME.d directory, then the app's link to the pilot. If the link cannot be
 * placed, the file (and a directory made here) are put back as they were, so
 * nothing is left half-registered.
 */
export async function installFlake(
  setup: FlakesSetup,
  name: string,
  text: string,
  app: string,
  pilot: string,
): Promise<string> {
  const file = flakeFilePath(setup, name);
  const fragmentDir = flakeFragmentDir(setup, name);
  const hadFragmentDir = (await pathKind(fragmentDir)) === "dir";
  const previous = await readTextFile(file);
  await writeFlakeFile(file, text);
  try {
    await ensureDir(fragmentDir);
    await placeSymlink(app, pilot);
  } catch (error) {
    if (previous === undefined) await removePath(file);
    else await writeFlakeFile(file, previous);
    if (!hadFragmentDir) await removePath(fragmentDir, { recursive: true });
    throw new EosError("IO", `cannot register ${app}: ${errorMessage(error)}`);
  }
  return file;
}

/**
 * Removes the flake whose host path is `app`: `cleanup` first (the engine's
 * own state: a provisioned image, resume VMs), then the link, NAME.yaml and
 * NAME.d/. Refuses a flake of the other engine and a link that is not a
 * pilot's unless `force`.
 */
export async function unregisterFlake(
  setup: FlakesSetup,
  app: string,
  engine: FlakeEngine,
  force: boolean,
  cleanup: (name: string) => Promise<void>,
): Promise<{ name: string; removed: boolean }> {
  assertHostPath(app, "--app");
  const name = assertFlakeName(baseName(app), "flake name");
  const file = flakeFilePath(setup, name);
  const kind = await pathKind(app);
  const target = kind === "symlink" ? await readLinkOrUndefined(app) : undefined;
  const text = await readTextFile(file);
  if (text === undefined && kind === "missing") {
    // flake-pilot: `remove --force` of what is not there is not an error.
    if (force) return { name, removed: false };
    throw new EosError("NOT_FOUND", `no flake registered for ${app} (${file} does not exist)`, {
      hint: "pass --force to ignore a flake that is not registered",
    });
  }
  if (text !== undefined && !force) {
    const engineOf = describeFlake(setup, name).engine;
    if (engineOf !== "unknown" && engineOf !== engine) {
      throw new EosError(
        "REFUSED",
        `${name} is not a ${SECTION[engine] === "vm" ? "VM" : "container"} flake (${file}); use flake-ctl ${engineOf} remove`,
      );
    }
  }
  if (kind !== "missing" && !isPilotLink(target, setup) && !force) {
    throw new EosError("REFUSED", `${app} is not a link to a pilot; not removing it`, {
      hint: "pass --force",
    });
  }
  await cleanup(name);
  if (kind !== "missing") await removePath(app);
  await removePath(file);
  await removePath(flakeFragmentDir(setup, name), { recursive: true });
  return { name, removed: true };
}
