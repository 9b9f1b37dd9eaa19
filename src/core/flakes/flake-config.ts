/**
 * The engine-neutral part of flakes, shared by podman-pilot and (later)
 * firecracker-pilot: /etc/flakes.yml, the NAME.yaml + NAME.d/*.yaml deep
 * merge, a small schema checker whose errors name the file and the key, and
 * the pilot's own caller arguments (`@NAME`, `%option`).
 *
 * No zod and no YAML library here on purpose: the pilots load this on every
 * launch (zod alone adds ~25 ms to a node start; a podman run is ~350 ms).
 * Text → data is in flake-yaml.ts, which the pilots load only on a cache miss.
 */
import { EosError } from "../errors.ts";

// ---------------------------------------------------------------- flakes.yml

export const DEFAULT_FLAKES_CONFIG_PATH = "/etc/flakes.yml";

export interface FlakesConfig {
  /** Where NAME.yaml and NAME.d/ live. */
  flakesDir: string;
  podmanIdsDir: string;
  firecrackerIdsDir: string;
  /** storage.conf for the pilot's podman calls; used only if the file exists. */
  podmanStorageConf: string;
  /** Additive: what a registered flake's symlink points at. */
  podmanPilot: string;
  firecrackerPilot: string;
}

export const FLAKES_CONFIG_DEFAULTS: FlakesConfig = {
  flakesDir: "/usr/share/flakes",
  podmanIdsDir: "/tmp/flakes",
  firecrackerIdsDir: "/tmp/flakes",
  podmanStorageConf: "/etc/flakes/storage.conf",
  podmanPilot: "/usr/bin/podman-pilot",
  firecrackerPilot: "/usr/bin/firecracker-pilot",
};

const absolutePath: Spec = { type: "string", absolute: true };

const flakesConfigSpec: Spec = {
  type: "map",
  fields: {
    generic: {
      type: "map",
      fields: {
        flakes_dir: absolutePath,
        podman_ids_dir: absolutePath,
        firecracker_ids_dir: absolutePath,
        podman_storage_conf: absolutePath,
        podman_pilot: absolutePath,
        firecracker_pilot: absolutePath,
      },
    },
  },
};

/** Checks parsed flakes.yml (`generic:` section); missing keys take flake-pilot's defaults. */
export function flakesConfigFromData(data: Record<string, unknown>, file: string): FlakesConfig {
  checkSpec(data, flakesConfigSpec, file, "");
  const generic = (data.generic ?? {}) as Record<string, string | null | undefined>;
  const pick = (key: string, fallback: string) => generic[key] ?? fallback;
  const d = FLAKES_CONFIG_DEFAULTS;
  return {
    flakesDir: pick("flakes_dir", d.flakesDir),
    podmanIdsDir: pick("podman_ids_dir", d.podmanIdsDir),
    firecrackerIdsDir: pick("firecracker_ids_dir", d.firecrackerIdsDir),
    podmanStorageConf: pick("podman_storage_conf", d.podmanStorageConf),
    podmanPilot: pick("podman_pilot", d.podmanPilot),
    firecrackerPilot: pick("firecracker_pilot", d.firecrackerPilot),
  };
}

// ---------------------------------------------------------------- merge

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

/**
 * Deep merge: mappings merge key by key, everything else (scalars, lists,
 * null) in `override` replaces what `base` had. Later files win.
 */
export function deepMerge(base: unknown, override: unknown): unknown {
  if (isPlainObject(base) && isPlainObject(override)) {
    // Null-prototype objects and own keys only: no key (`__proto__` included) reaches a prototype.
    const out: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
    for (const [key, value] of Object.entries(base)) out[key] = value;
    for (const [key, value] of Object.entries(override)) {
      out[key] = Object.hasOwn(base, key) ? deepMerge(base[key], value) : value;
    }
    return out;
  }
  return override;
}

/** Keys that reach an object's prototype machinery: refused in every flake file. */
const FORBIDDEN_KEYS = ["__proto__", "constructor", "prototype"];

// ---------------------------------------------------------------- schema

/** The `include:` section both flake kinds share: files added to the container or the VM's overlay. */
export const INCLUDE_SPEC = {
  type: "map",
  fields: {
    tar: { type: "list", item: { type: "string", absolute: true } },
    path: { type: "list", item: { type: "string", absolute: true } },
  },
} as const;

export type Spec =
  | { type: "string"; absolute?: boolean; pattern?: RegExp; patternText?: string }
  | { type: "boolean" }
  | { type: "integer"; min?: number; max?: number }
  | { type: "list"; item: Spec }
  | { type: "map"; fields: Record<string, Spec>; required?: string[] }
  /** A mapping with free keys (e.g. named instances), each value checked against `value`. */
  | { type: "dict"; value: Spec }
  /**
   * A key that may only be empty (`~`): the other engine's section, which
   * flake-pilot's flake-ctl writes as null into every flake file.
   */
  | { type: "empty"; why: string };

/**
 * Values of flake-pilot's templates (flake-ctl/template/*-flake.yaml) that
 * must be replaced before a file is used: what to put there instead.
 */
const TEMPLATE_PLACEHOLDERS: Record<string, string> = {
  "path/to/program/in/container":
    "the absolute path of the program inside the container or VM (/ for the image's entrypoint)",
  "path/to/program/on/host": "the absolute path of the command on the host, e.g. /usr/bin/NAME",
};

function keyPath(parent: string, key: string | number): string {
  if (typeof key === "number") return `${parent}[${key}]`;
  return parent ? `${parent}.${key}` : key;
}

/**
 * Checks `value` against `spec`. `null` is accepted everywhere as "not set"
 * (flake-pilot's templates write `~`). Errors name the file and the key.
 * `required` keys are checked only when `checkRequired` is true, so the
 * fragments in NAME.d/ may be partial.
 */
export function checkSpec(
  value: unknown,
  spec: Spec,
  file: string,
  path: string,
  checkRequired = false,
): void {
  if (value === null || value === undefined) return;
  const fail = (message: string): never => {
    throw new EosError("CONFIG", `${file}: ${path || "(top level)"}: ${message}`);
  };
  if (typeof value === "string" && Object.hasOwn(TEMPLATE_PLACEHOLDERS, value)) {
    throw new EosError(
      "CONFIG",
      `${file}: ${path}: still holds the template's placeholder ${JSON.stringify(value)}`,
      { hint: `fill in ${path} with ${TEMPLATE_PLACEHOLDERS[value]}` },
    );
  }
  switch (spec.type) {
    case "empty":
      fail(`must be empty (~): ${spec.why}`);
      return;
    case "string":
      if (typeof value !== "string") {
        if (typeof value === "number" || typeof value === "boolean") return; // YAML scalars read as strings below
        fail("must be a string");
      }
      if (typeof value === "string") {
        if (spec.absolute && !value.startsWith("/"))
          fail(`must be an absolute path, got ${JSON.stringify(value)}`);
        if (spec.pattern && !spec.pattern.test(value))
          fail(`${spec.patternText ?? "has an invalid format"}, got ${JSON.stringify(value)}`);
      }
      return;
    case "boolean":
      if (typeof value !== "boolean") fail(`must be true or false, got ${JSON.stringify(value)}`);
      return;
    case "integer":
      if (typeof value !== "number" || !Number.isInteger(value)) fail(`must be a whole number`);
      if (spec.min !== undefined && (value as number) < spec.min) fail(`must be at least ${spec.min}`);
      if (spec.max !== undefined && (value as number) > spec.max) fail(`must be at most ${spec.max}`);
      return;
    case "list":
      if (!Array.isArray(value)) fail("must be a list");
      (value as unknown[]).forEach((item, i) =>
        checkSpec(item, spec.item, file, keyPath(path, i), checkRequired),
      );
      return;
    case "dict":
      if (!isPlainObject(value)) fail("must be a mapping");
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
        if (FORBIDDEN_KEYS.includes(k))
          throw new EosError("CONFIG", `${file}: key ${keyPath(path, k)} is not allowed`);
        checkSpec(v, spec.value, file, keyPath(path, k), checkRequired);
      }
      return;
    case "map": {
      if (!isPlainObject(value)) fail("must be a mapping");
      const obj = value as Record<string, unknown>;
      for (const [k, v] of Object.entries(obj)) {
        if (FORBIDDEN_KEYS.includes(k))
          throw new EosError("CONFIG", `${file}: key ${keyPath(path, k)} is not allowed`);
        const field = Object.hasOwn(spec.fields, k) ? spec.fields[k] : undefined;
        if (!field) {
          throw new EosError(
            "CONFIG",
            `${file}: unknown key ${keyPath(path, k)} (known here: ${Object.keys(spec.fields).join(", ")})`,
          );
        }
        checkSpec(v, field, file, keyPath(path, k), checkRequired);
      }
      if (checkRequired) {
        for (const k of spec.required ?? []) {
          if (!Object.hasOwn(obj, k) || obj[k] === undefined || obj[k] === null)
            fail(`missing required key ${keyPath(path, k)}`);
        }
      }
      return;
    }
  }
}

/** A YAML scalar read as a string (`name: 1.0` is the string "1.0" for us). */
export function scalarString(value: unknown): string | undefined {
  if (value === null || value === undefined) return undefined;
  return String(value);
}

export function stringList(value: unknown): string[] {
  if (!Array.isArray(value)) return [];
  return value.filter((v) => v !== null && v !== undefined).map(String);
}

// ---------------------------------------------------------------- flake files

export interface FlakeSource {
  file: string;
  text: string;
}

export interface FlakeDocument {
  file: string;
  data: Record<string, unknown>;
}

/**
 * NAME.yaml and then NAME.d/*.yaml (the caller passes them in sorted order):
 * each is checked on its own (so an unknown key names the file it is in),
 * deep-merged, and the result is checked for required keys.
 */
export function mergeFlakeDocuments(docs: FlakeDocument[], spec: Spec): Record<string, unknown> {
  if (docs.length === 0) throw new EosError("INTERNAL", "no flake file given");
  let merged: unknown = Object.create(null);
  for (const doc of docs) {
    checkSpec(doc.data, spec, doc.file, "");
    merged = deepMerge(merged, doc.data);
  }
  const files = docs.map((d) => d.file);
  const label =
    files.length === 1 ? (files[0] ?? "") : `${files[0]} (merged with ${files.slice(1).join(", ")})`;
  checkSpec(merged, spec, label, "", true);
  return merged as Record<string, unknown>;
}

/** Sort order of NAME.d/ fragments: plain code-point order, as flake-pilot's sorted paths. */
export function sortFragmentNames(names: string[]): string[] {
  return splitFragmentNames(names).read;
}

/**
 * NAME.d/ entries: `*.yaml` and `*.yml` are read, in one sorted order (as
 * flake-pilot, which reads every file there); anything else is reported so
 * the caller can warn instead of dropping it silently. Hidden files (editor
 * and atomic-write leftovers) are skipped without a word.
 */
export function splitFragmentNames(names: string[]): { read: string[]; ignored: string[] } {
  const visible = names.filter((n) => !n.startsWith(".")).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const isYaml = (n: string) => n.endsWith(".yaml") || n.endsWith(".yml");
  return { read: visible.filter(isYaml), ignored: visible.filter((n) => !isYaml(n)) };
}

// ---------------------------------------------------------------- names

const FLAKE_NAME = /^[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}$/;

/** A flake's name is used as a file name in flakes_dir and the ids dir. */
export function isSafeFlakeName(name: string): boolean {
  return FLAKE_NAME.test(name) && name !== "." && name !== ".." && !name.includes("..");
}

export function assertFlakeName(name: string, what = "flake name"): string {
  if (!isSafeFlakeName(name)) {
    throw new EosError(
      "USAGE",
      `${what} ${JSON.stringify(name)} is not allowed: use letters, digits and . _ + - (no /, no ..)`,
    );
  }
  return name;
}

/** A host path such as /usr/bin/lynx: absolute, normalised, no `..` or `.` parts. */
export function assertHostPath(path: string, what: string): string {
  if (!path.startsWith("/"))
    throw new EosError("USAGE", `${what} ${JSON.stringify(path)} must be an absolute path`);
  const parts = path.split("/").slice(1);
  if (path === "/" || parts.some((p) => p === "" || p === "." || p === "..") || path.includes("\0")) {
    throw new EosError(
      "USAGE",
      `${what} ${JSON.stringify(path)} must be a plain absolute path (no //, . or ..)`,
    );
  }
  return path;
}

export function baseName(path: string): string {
  const parts = path.split("/").filter(Boolean);
  return parts[parts.length - 1] ?? "";
}

// ---------------------------------------------------------------- pilot args

/** flake-ctl's flags as flake-pilot also spelled them (with underscores), in today's spelling. */
export function normaliseFlakeCtlArgv(argv: string[]): string[] {
  return argv.map((a) =>
    a === "--check_host_dependencies"
      ? "--check-host-dependencies"
      : a.replace(
          /^--(include_tar|include_path)(=|$)/,
          (_m, k: string, eq: string) => `--${k.replace("_", "-")}${eq}`,
        ),
  );
}
