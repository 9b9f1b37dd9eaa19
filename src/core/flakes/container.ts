/**
 * Container flakes: the `container:` schema of flake-pilot, the YAML that
 * `flake-ctl podman register` writes, and the podman argument vectors the
 * pilot runs. Pure: the io layer executes what is built here.
 */
import { EosError } from "../errors.ts";
import {
  checkSpec,
  mergeFlakeDocuments,
  scalarString,
  stringList,
  type FlakeDocument,
  INCLUDE_SPEC,
  type Spec,
} from "./flake-config.ts";
import { expandPercentVars } from "./pilot-args.ts";

/** `%options` podman-pilot takes from the caller's arguments. */
export const PODMAN_PILOT_OPTIONS = [
  "remove",
  "interactive",
  "ignore_missing_volume_path",
  "ignore_sync_error",
  "progress",
  "silent",
] as const;

const imageRef: Spec = {
  type: "string",
  pattern: /^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$/,
  patternText: "must be a container image name (letters, digits and . _ / : @ + -)",
};
const targetPath: Spec = {
  type: "string",
  pattern: /^\/[^\s\0]*$/,
  patternText: "must be an absolute path without spaces, or / for the image's entrypoint",
};
const absolute: Spec = { type: "string", absolute: true };

export const containerFlakeSpec: Spec = {
  type: "map",
  required: ["container"],
  fields: {
    container: {
      type: "map",
      required: ["name", "host_app_path"],
      fields: {
        name: imageRef,
        target_app_path: targetPath,
        host_app_path: absolute,
        base_container: imageRef,
        check_host_dependencies: { type: "boolean" },
        layers: { type: "list", item: imageRef },
        runtime: {
          type: "map",
          fields: {
            runas: { type: "string" },
            resume: { type: "boolean" },
            attach: { type: "boolean" },
            podman: { type: "list", item: { type: "string" } },
          },
        },
      },
    },
    include: INCLUDE_SPEC,
    vm: { type: "empty", why: "this is a container flake (flake-pilot writes vm: ~ here)" },
  },
};

export interface ContainerFlake {
  /** The app's image (a delta image when `baseContainer` is set). */
  name: string;
  /** Program in the container; "/" means the image's entrypoint. */
  targetAppPath: string;
  hostAppPath: string;
  baseContainer: string | undefined;
  layers: string[];
  checkHostDependencies: boolean;
  runtime: {
    runas: string | undefined;
    resume: boolean;
    attach: boolean;
    /** As written (`--net host`); undefined when the file has none. */
    podman: string[] | undefined;
  };
  include: { tar: string[]; path: string[] };
}

/** NAME.yaml + NAME.d/*.yaml (parsed, in sorted order), deep-merged into a ContainerFlake. */
export function containerFlakeFromDocuments(docs: FlakeDocument[]): ContainerFlake {
  const data = mergeFlakeDocuments(docs, containerFlakeSpec);
  const c = data.container as Record<string, unknown>;
  const runtime = (c.runtime ?? {}) as Record<string, unknown>;
  const include = (data.include ?? {}) as Record<string, unknown>;
  const hostAppPath = scalarString(c.host_app_path) ?? "";
  const flake: ContainerFlake = {
    name: scalarString(c.name) ?? "",
    targetAppPath: scalarString(c.target_app_path) ?? hostAppPath,
    hostAppPath,
    baseContainer: scalarString(c.base_container),
    layers: stringList(c.layers),
    checkHostDependencies: c.check_host_dependencies === true,
    runtime: {
      runas: scalarString(runtime.runas),
      resume: runtime.resume === true,
      attach: runtime.attach === true,
      podman: Array.isArray(runtime.podman) ? stringList(runtime.podman) : undefined,
    },
    include: { tar: stringList(include.tar), path: stringList(include.path) },
  };
  const label = docs[0]?.file ?? "flake";
  if (flake.runtime.resume && flake.runtime.attach) {
    throw new EosError("CONFIG", `${label}: container.runtime: resume and attach cannot both be true`);
  }
  if (flake.layers.length > 0 && !flake.baseContainer) {
    throw new EosError("CONFIG", `${label}: container.layers needs container.base_container`);
  }
  return flake;
}

/** The document `flake-ctl podman register` writes (as YAML), in flake-pilot's layout. */
export function containerFlakeDocument(flake: ContainerFlake): Record<string, unknown> {
  const doc = {
    include: {
      tar: flake.include.tar.length ? flake.include.tar : null,
      path: flake.include.path.length ? flake.include.path : null,
    },
    container: {
      name: flake.name,
      target_app_path: flake.targetAppPath,
      host_app_path: flake.hostAppPath,
      base_container: flake.baseContainer ?? null,
      check_host_dependencies: flake.checkHostDependencies,
      layers: flake.layers.length ? flake.layers : null,
      runtime: {
        runas: flake.runtime.runas ?? null,
        resume: flake.runtime.resume,
        attach: flake.runtime.attach,
        podman: flake.runtime.podman ?? null,
      },
    },
  };
  // What we write must read back: guard against a schema drift.
  checkSpec(doc, containerFlakeSpec, "generated flake", "", true);
  return doc;
}

/** `--opt '\--net host'`: a leading backslash lets an option start with `-` on the command line. */
export function normaliseRegisterOption(opt: string): string {
  return opt.startsWith("\\") ? opt.slice(1) : opt;
}

// ---------------------------------------------------------------- options

export interface OptionContext {
  env: Record<string, string | undefined>;
  /** Keep `--rm` (plain runs) or drop it (resume/attach instances persist). */
  removeAfterRun: boolean;
}

/**
 * Turns the runtime `podman:` list into arguments: each entry splits once at
 * the first space (`--storage-opt size=10G`), `%VAR` expands, and the flags
 * the pilot decides itself are dropped: `-t/-i` (a TTY only when there is
 * one), `--rm` (per mode), `--pull` (never contact a registry at launch),
 * `-d` (the pilot waits for the app).
 */
export function podmanOptions(raw: string[] | undefined, ctx: OptionContext): string[] {
  const out: string[] = [];
  for (const entry of raw ?? []) {
    const opt = normaliseRegisterOption(entry.trim());
    if (opt === "") continue;
    const space = opt.indexOf(" ");
    const tokens = space < 0 ? [opt] : [opt.slice(0, space), opt.slice(space + 1).trim()];
    const head = tokens[0] ?? "";
    if (/^-[it]+$/.test(head) || /^--(tty|interactive|rm|detach)(=(true|false))?$/.test(head)) continue;
    if (/^-d$/.test(head)) continue;
    if (/^--pull(=|$)/.test(head)) continue;
    for (const token of tokens) out.push(expandPercentVars(token, ctx.env));
  }
  if (ctx.removeAfterRun) out.unshift("--rm");
  return out;
}

const VOLUME_FLAGS = new Set(["-v", "--volume"]);

/**
 * Bind mounts whose host path is missing: an error naming the path, or, with
 * `%ignore_missing_volume_path`, the mount is left out.
 */
export function checkVolumes(
  args: string[],
  exists: (path: string) => boolean,
  ignoreMissing: boolean,
): { args: string[]; skipped: string[] } {
  const out: string[] = [];
  const skipped: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] ?? "";
    let spec: string | undefined;
    let width = 1;
    if (VOLUME_FLAGS.has(arg)) {
      spec = args[i + 1];
      width = 2;
    } else if (arg.startsWith("--volume=")) spec = arg.slice("--volume=".length);
    const source = spec?.split(":")[0];
    if (source?.startsWith("/") && !exists(source)) {
      if (!ignoreMissing) {
        throw new EosError("FLAKE", `volume ${JSON.stringify(spec)}: host path ${source} does not exist`, {
          hint: "create it, or call the flake with %ignore_missing_volume_path to leave the volume out",
        });
      }
      skipped.push(source);
      i += width - 1;
      continue;
    }
    for (let k = 0; k < width; k++) out.push(args[i + k] ?? "");
    i += width - 1;
  }
  return { args: out, skipped };
}

function entrypoint(target: string): string[] {
  // JSON form: podman takes the value literally, whatever the path contains.
  return target === "/" ? [] : [`--entrypoint=${JSON.stringify([target])}`];
}

function hasInit(options: string[]): boolean {
  return options.some((o) => o === "--init" || o.startsWith("--init="));
}

export interface LaunchShape {
  image: string;
  target: string;
  options: string[];
  tty: boolean;
  appArgs: string[];
}

/**
 * The one podman call of a plain launch. `--init` makes signals behave as on
 * the host (an app that is PID 1 ignores SIGINT/SIGTERM it has no handler
 * for); `--pull=never` keeps the registry out of the launch path.
 */
export function runArgv(s: LaunchShape): string[] {
  return [
    "run",
    "-i",
    ...(s.tty ? ["-t"] : []),
    "--pull=never",
    ...(hasInit(s.options) ? [] : ["--init"]),
    ...s.options,
    ...entrypoint(s.target),
    s.image,
    ...s.appArgs,
  ];
}

/** Attach flakes: a named, kept container whose first run is the app itself. */
export function attachRunArgv(s: LaunchShape, cidFile: string): string[] {
  return ["run", "--cidfile", cidFile, ...runArgv(s).slice(1)];
}

/** Resume flakes: an instance kept running with sleep, apps run in it with exec. */
export function resumeCreateArgv(image: string, options: string[]): string[] {
  return [
    "run",
    "-d",
    "--pull=never",
    ...(hasInit(options) ? [] : ["--init"]),
    ...options,
    `--entrypoint=${JSON.stringify(["sleep"])}`,
    image,
    "4294967295d",
  ];
}

export function execArgv(cid: string, target: string, tty: boolean, appArgs: string[]): string[] {
  return ["exec", "-i", ...(tty ? ["-t"] : []), cid, target, ...appArgs];
}

export function startAttachArgv(cid: string): string[] {
  return ["start", "--attach", "--interactive", cid];
}

export function attachArgv(cid: string): string[] {
  return ["attach", cid];
}

// ---------------------------------------------------------------- provisioning

export function needsProvisioning(flake: ContainerFlake): boolean {
  return (
    flake.baseContainer !== undefined ||
    flake.layers.length > 0 ||
    flake.include.tar.length > 0 ||
    flake.include.path.length > 0 ||
    flake.checkHostDependencies
  );
}

export interface ProvisionPlan {
  /** Image IDs, resolved at provisioning time. */
  from: string;
  copyFrom: string[];
  /** Context-relative tar names (`ADD` unpacks them). */
  tars: string[];
  /** Context has `paths/` (include.path) and/or `host/` (host dependencies). */
  paths: boolean;
  hostDeps: boolean;
  key: string;
}

/** The build context's file holding the provisioning key, and where the image carries it. */
export const PROVISION_KEY_FILE = "eos-flake-key";
export const PROVISION_KEY_PATH = "/usr/share/eos-flake/key";

/**
 * The Containerfile of a provisioned flake image: the base, each layer, then
 * the app image copied on top; then host dependencies and includes. Only
 * COPY/ADD: nothing from any image runs on the host (or at all) while it is
 * built. The key goes into the layer itself, not only a label: the layer of
 * the same app on another base (a base an OS update took away with its
 * read-only store) would otherwise have the same digest, and podman reuses
 * a layer by digest, reading the old one through its missing parent.
 */
export function provisionContainerfile(plan: ProvisionPlan, flakeName: string): string {
  const lines = [`FROM ${plan.from}`];
  for (const id of plan.copyFrom) lines.push(`COPY --from=${id} / /`);
  if (plan.hostDeps) lines.push("COPY host/ /");
  for (const tar of plan.tars) lines.push(`ADD ${tar} /`);
  if (plan.paths) lines.push("COPY paths/ /");
  lines.push(`COPY ${PROVISION_KEY_FILE} ${PROVISION_KEY_PATH}`);
  lines.push(`LABEL eos.flake.name=${JSON.stringify(flakeName)} eos.flake.key=${JSON.stringify(plan.key)}`);
  return `${lines.join("\n")}\n`;
}

/**
 * What the content key of a provisioned image is hashed from: it changes when
 * any source image or included file does. (The io layer hashes it: loading
 * node:crypto costs ~10 ms of start-up, so the pilot only does it when it must.)
 */
export function provisionKeyMaterial(parts: {
  base: string;
  layers: string[];
  app: string | undefined;
  includes: string[];
  hostDeps: string[];
}): string {
  return JSON.stringify({ v: 1, ...parts });
}

/** Repository for a flake's provisioned images (lower case, as image names must be). */
export function provisionedImageName(flakeName: string, key: string): string {
  const repo = flakeName.toLowerCase().replace(/[^a-z0-9._-]/g, "-");
  return `localhost/eos-flake/${repo}:${key}`;
}

/** `removed` files in flake images list host paths the app needs from the host. */
export function parseHostDependencies(text: string): string[] {
  return text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"))
    .map((l) => (l.startsWith("/") ? l : `/${l}`))
    .filter((l) => !l.split("/").includes(".."));
}

export function cidFileName(flakeName: string, instance: string | undefined): string {
  return `${flakeName}${instance ? `@${instance}` : ""}.cid`;
}
