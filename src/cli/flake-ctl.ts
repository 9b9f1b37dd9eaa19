/**
 * `flake-ctl`: register, remove and inspect flakes. This module has the
 * container (`podman`) commands and the engine-neutral `list` and `init`.
 */
import { readdir } from "node:fs/promises";
import { userInfo } from "node:os";
import { basename, dirname, join } from "node:path";
import { EosError, errorMessage } from "../core/errors.ts";
import {
  assertFlakeName,
  assertHostPath,
  baseName,
  deepMerge,
  scalarString,
} from "../core/flakes/flake-config.ts";
import {
  needsProvisioning,
  normaliseRegisterOption,
  podmanOptions,
  runArgv,
  type ContainerFlake,
} from "../core/flakes/container.ts";
import {
  parseContainerFlake,
  parseYamlMapping,
  renderContainerFlake,
  renderYaml,
} from "../core/flakes/flake-yaml.ts";
import type { Context } from "../io/context.ts";
import {
  ensureDir,
  flakeFilePath,
  flakeFragmentDir,
  idsDirFor,
  installFlake,
  isPilotLink,
  listFlakeNames,
  loadFlakesSetup,
  pathKind,
  readFlakeSources,
  readLinkOrUndefined,
  readTextFile,
  removePath,
  userFlakesConfigPath,
  type FlakesSetup,
} from "../io/flakes/flake-files.ts";
import { atomicWriteFile, fileExists } from "../io/files.ts";
import { Podman } from "../io/flakes/podman.ts";
import { newProgram, parseProgram, usageError } from "./main.ts";
import { isDebug, podmanEnv } from "./podman-pilot.ts";
import { addFirecrackerCommands } from "./flake-ctl-firecracker.ts";

const IMAGE_REF = /^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$/;

function assertImage(ref: string, what: string): string {
  if (!IMAGE_REF.test(ref)) {
    throw usageError(`${what} ${JSON.stringify(ref)} is not a container image name`);
  }
  return ref;
}

function podmanFor(ctx: Context, setup: FlakesSetup): Podman {
  return new Podman({
    env: podmanEnv(ctx.env, setup),
    debug: isDebug(ctx.env),
    log: ctx.stderr,
    label: "flake-ctl",
  });
}

export interface RegisterOptions {
  container: string;
  app?: string;
  target?: string;
  base?: string;
  layer?: string[];
  opt?: string[];
  resume?: boolean;
  attach?: boolean;
  includeTar?: string[];
  includePath?: string[];
  checkHostDependencies?: boolean;
  force?: boolean;
  info?: boolean;
}

export async function registerContainerFlake(
  ctx: Context,
  setup: FlakesSetup,
  opts: RegisterOptions,
): Promise<{ name: string; file: string; link: string }> {
  assertImage(opts.container, "--container");
  if (opts.base !== undefined) assertImage(opts.base, "--base");
  for (const layer of opts.layer ?? []) assertImage(layer, "--layer");
  if (opts.app === undefined) throw usageError("--app is required (or --info)");
  const app = assertHostPath(opts.app, "--app");
  const target = opts.target ?? app;
  if (target !== "/") assertHostPath(target, "--target");
  if (/\s/.test(target)) throw usageError(`--target ${JSON.stringify(target)} must not contain spaces`);
  const name = assertFlakeName(baseName(app), "flake name (the basename of --app)");
  if (opts.resume && opts.attach) throw usageError("--resume and --attach exclude each other");
  if ((opts.layer?.length ?? 0) > 0 && !opts.base) throw usageError("--layer needs --base");
  if (opts.resume && target === "/") throw usageError("--resume needs --target (an app to exec), not /");
  for (const p of [...(opts.includeTar ?? []), ...(opts.includePath ?? [])]) assertHostPath(p, "--include-*");

  const flake: ContainerFlake = {
    name: opts.container,
    targetAppPath: target,
    hostAppPath: app,
    baseContainer: opts.base,
    layers: opts.layer ?? [],
    checkHostDependencies: Boolean(opts.checkHostDependencies),
    runtime: {
      runas: userInfo().username,
      resume: Boolean(opts.resume),
      attach: Boolean(opts.attach),
      podman: opts.opt && opts.opt.length > 0 ? opts.opt.map(normaliseRegisterOption) : undefined,
    },
    include: { tar: opts.includeTar ?? [], path: opts.includePath ?? [] },
  };
  // Options must make sense now, not at the first launch (%VARs are expanded then).
  podmanOptions(flake.runtime.podman, { env: new Proxy({}, { get: () => "x" }), removeAfterRun: true });

  // Refuse to replace what is not ours.
  const file = flakeFilePath(setup, name);
  const kind = await pathKind(app);
  const linkTarget = kind === "symlink" ? await readLinkOrUndefined(app) : undefined;
  if (kind !== "missing" && !isPilotLink(linkTarget, setup) && !opts.force) {
    throw new EosError("REFUSED", `${app} exists and is not a flake`, {
      hint: "choose another --app, or pass --force to replace it",
    });
  }
  if ((await fileExists(file)) && !opts.force) {
    const existing = await readTextFile(file);
    const other = existing
      ? scalarString(deepGet(safeYaml(existing, file), ["container", "host_app_path"]))
      : undefined;
    if (other !== undefined && other !== app) {
      throw new EosError("REFUSED", `flake ${name} is already registered for ${other} (${file})`, {
        hint: "remove it first (flake-ctl podman remove --app …) or pass --force",
      });
    }
  }

  // The images must be there: a flake never pulls at launch.
  const podman = podmanFor(ctx, setup);
  await podman.imageIds([opts.container, ...(opts.base ? [opts.base] : []), ...(opts.layer ?? [])]);
  for (const p of [...flake.include.tar, ...flake.include.path]) {
    if (!(await fileExists(p))) throw new EosError("NOT_FOUND", `include ${p} does not exist`);
  }

  // Write the flake file, then the link; undo the file if the link fails.
  const text = renderContainerFlake(flake);
  parseContainerFlake([{ file, text }]);
  await installFlake(setup, name, file, text, app, setup.config.podmanPilot);
  return { name, file, link: app };
}

function safeYaml(text: string, file: string): Record<string, unknown> {
  try {
    return parseYamlMapping(text, file);
  } catch {
    return {};
  }
}

function deepGet(data: unknown, path: string[]): unknown {
  let cur = data;
  for (const key of path) {
    if (typeof cur !== "object" || cur === null) return undefined;
    cur = (cur as Record<string, unknown>)[key];
  }
  return cur;
}

/** Merged view of a flake for listing: never throws; engine from the top-level key. */
function describeFlake(setup: FlakesSetup, name: string): Record<string, unknown> {
  try {
    const sources = readFlakeSources(setup, name);
    let merged: unknown = {};
    for (const s of sources) merged = deepMerge(merged, parseYamlMapping(s.text, s.file));
    const engine = deepGet(merged, ["container"])
      ? "podman"
      : deepGet(merged, ["vm"])
        ? "firecracker"
        : "unknown";
    const section = (deepGet(merged, [engine === "podman" ? "container" : "vm"]) ?? {}) as Record<
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
      file: flakeFilePath(setup, name),
      fragments: sources.slice(1).map((s) => s.file),
    };
  } catch (error) {
    return { name, engine: "unknown", error: errorMessage(error), file: flakeFilePath(setup, name) };
  }
}

async function removeFlake(
  ctx: Context,
  setup: FlakesSetup,
  app: string,
  force: boolean,
): Promise<{ name: string }> {
  assertHostPath(app, "--app");
  const name = assertFlakeName(baseName(app), "flake name");
  const file = flakeFilePath(setup, name);
  const kind = await pathKind(app);
  const target = kind === "symlink" ? await readLinkOrUndefined(app) : undefined;
  if (!(await fileExists(file)) && kind === "missing") {
    throw new EosError("NOT_FOUND", `no flake registered for ${app} (${file} does not exist)`);
  }
  if (kind !== "missing" && !isPilotLink(target, setup) && !force) {
    throw new EosError("REFUSED", `${app} is not a link to a pilot; not removing it`, {
      hint: "pass --force",
    });
  }
  // Provisioned image and its record (best effort: an instance may still use it).
  const record = join(idsDirFor(setup.config.podmanIdsDir), `${name}.image.json`);
  const recorded = await readTextFile(record);
  if (recorded) {
    try {
      const image = (JSON.parse(recorded) as { image?: string }).image;
      if (image) await podmanFor(ctx, setup).output(["image", "rm", image], { allowFailure: true });
    } catch {
      // not ours to fix: a broken record is just removed
    }
    await removePath(record);
  }
  if (kind !== "missing") await removePath(app);
  await removePath(file);
  await removePath(flakeFragmentDir(setup, name), { recursive: true });
  return { name };
}

/** `podman load --oci`: a missing path is a glob base; the highest match in sort order wins. */
async function resolveOci(path: string): Promise<string> {
  if (await fileExists(path)) return path;
  const dir = dirname(path);
  const prefix = basename(path);
  const matches = (await readdir(dir).catch(() => [] as string[])).filter((f) => f.startsWith(prefix)).sort();
  const last = matches[matches.length - 1];
  if (!last)
    throw new EosError("NOT_FOUND", `OCI archive ${path} does not exist (and nothing starts with it)`);
  return join(dir, last);
}

function normaliseArgv(argv: string[]): string[] {
  return argv.map((a) =>
    a === "--check_host_dependencies"
      ? "--check-host-dependencies"
      : a.replace(
          /^--(include_tar|include_path)(=|$)/,
          (_m, k: string, eq: string) => `--${k.replace("_", "-")}${eq}`,
        ),
  );
}

const collect = (value: string, previous: string[] = []) => [...previous, value];

export async function flakeCtlMain(argv: string[], ctx: Context): Promise<number> {
  const program = newProgram("flake-ctl", ctx).description(
    "manage flakes: host commands that run in a container or VM",
  );
  let result = 0;
  const out = (s: string) => ctx.stdout.write(s);

  const podmanCmd = program
    .command("podman")
    .description("container flakes")
    .option("--user", "use the user's flakes (~/.config/flakes.yml)");
  const setupFor = () => loadFlakesSetup(ctx, { user: Boolean(podmanCmd.opts<{ user?: boolean }>().user) });

  podmanCmd
    .command("register")
    .description("register a container app: NAME.yaml in flakes_dir and a link to podman-pilot")
    .requiredOption("--container <image>", "app image in the local podman storage")
    .option("--app <path>", "absolute path of the command on the host")
    .option("--target <path>", "path of the app in the container (default: --app; / for the entrypoint)")
    .option("--base <image>", "base image: --container is a delta image on top of it")
    .option("--layer <image>", "layer between base and app (repeatable, in order)", collect)
    .option("--opt <option>", "podman run option, e.g. '\\--net host' (repeatable)", collect)
    .option("--resume", "keep one instance running; later calls exec into it")
    .option("--attach", "keep the instance; later calls attach to it")
    .option("--include-tar <file>", "tar archive unpacked on top of the container (repeatable)", collect)
    .option("--include-path <path>", "host file or directory copied into the container (repeatable)", collect)
    .option("--check-host-dependencies", "copy host files listed in the image's /removed into the container")
    .option("--force", "replace an existing file at --app or another flake of the same name")
    .option("--info", "print the registration info (/NAME.yaml) the image carries, then stop")
    .action(async (opts: RegisterOptions) => {
      const setup = await setupFor();
      if (opts.info) {
        assertImage(opts.container, "--container");
        const podman = podmanFor(ctx, setup);
        await podman.imageIds([opts.container]);
        const infoName = `${baseName(opts.container).replace(/[:@].*$/, "")}.yaml`;
        const text = await podman.withImageMount(opts.container, (dir) => readTextFile(join(dir, infoName)));
        if (text === undefined)
          throw new EosError("NOT_FOUND", `image ${opts.container} carries no /${infoName}`);
        out(text.endsWith("\n") ? text : `${text}\n`);
        if (opts.app === undefined) return;
      }
      const done = await registerContainerFlake(ctx, setup, opts);
      out(`registered ${done.name}: ${done.link} -> ${setup.config.podmanPilot} (${done.file})\n`);
      if (!(await fileExists(setup.config.podmanPilot))) {
        ctx.stderr.write(
          `flake-ctl: warning: ${setup.config.podmanPilot} does not exist yet (podman_pilot in ${setup.configPath})\n`,
        );
      }
    });

  podmanCmd
    .command("remove")
    .description("remove a flake (--app) or every flake of an image and the image (--container)")
    .option("--app <path>", "host path of the flake")
    .option("--container <image>", "image: remove its flakes and the image")
    .option("--force", "remove --app even if it is not a link to the pilot")
    .action(async (opts: { app?: string; container?: string; force?: boolean }) => {
      const setup = await setupFor();
      if ((opts.app === undefined) === (opts.container === undefined))
        throw usageError("give exactly one of --app or --container");
      if (opts.app !== undefined) {
        const { name } = await removeFlake(ctx, setup, opts.app, Boolean(opts.force));
        out(`removed ${name}\n`);
        return;
      }
      const image = assertImage(opts.container ?? "", "--container");
      for (const name of await listFlakeNames(setup)) {
        const info = describeFlake(setup, name);
        if (info.engine !== "podman" || info.image !== image) continue;
        const app = typeof info.host_app_path === "string" ? info.host_app_path : undefined;
        if (app) await removeFlake(ctx, setup, app, true);
        else {
          await removePath(flakeFilePath(setup, name));
          await removePath(flakeFragmentDir(setup, name), { recursive: true });
        }
        out(`removed ${name}\n`);
      }
      const podman = podmanFor(ctx, setup);
      const rm = await podman.output(["image", "rm", "--force", image], { allowFailure: true });
      if (rm.code !== 0 && !/image not known/.test(rm.stderr)) {
        throw new EosError("PODMAN", `podman image rm ${image}: ${rm.stderr.trim()}`);
      }
      out(`removed image ${image}\n`);
    });

  podmanCmd
    .command("pull")
    .description("pull an image into the local podman storage (no prune)")
    .requiredOption("--uri <uri>", "image reference")
    .action(async (opts: { uri: string }) => {
      assertImage(opts.uri, "--uri");
      result = await podmanFor(ctx, await setupFor()).launch(["pull", opts.uri], {
        stdio: ["ignore", "inherit", "inherit"],
      });
    });

  podmanCmd
    .command("load")
    .description("load an OCI/docker archive into the local podman storage")
    .requiredOption("--oci <file>", "archive (a missing path is a prefix: the highest match loads)")
    .action(async (opts: { oci: string }) => {
      const file = await resolveOci(opts.oci);
      result = await podmanFor(ctx, await setupFor()).launch(["load", "-i", file], {
        stdio: ["ignore", "inherit", "inherit"],
      });
    });

  podmanCmd
    .command("show")
    .description("show container flakes, or one flake's merged configuration and launch command")
    .argument("[name]", "flake name (or use --app)")
    .option("--app <path>", "host path of the flake")
    .option("--json", "machine-readable output")
    .action(async (nameArg: string | undefined, opts: { app?: string; json?: boolean }) => {
      const setup = await setupFor();
      const name = opts.app ? baseName(assertHostPath(opts.app, "--app")) : nameArg;
      if (!name) {
        const all = (await listFlakeNames(setup))
          .map((n) => describeFlake(setup, n))
          .filter((d) => d.engine === "podman");
        if (opts.json) out(`${JSON.stringify(all, null, 2)}\n`);
        else for (const d of all) out(`${String(d.name)}\t${String(d.image)}\t${String(d.host_app_path)}\n`);
        return;
      }
      assertFlakeName(name);
      const sources = readFlakeSources(setup, name);
      const flake = parseContainerFlake(sources);
      const persistent = flake.runtime.resume || flake.runtime.attach;
      // A delta/include flake runs its provisioned image (built at its first launch).
      let image = flake.name;
      if (needsProvisioning(flake)) {
        const record = await readTextFile(join(idsDirFor(setup.config.podmanIdsDir), `${name}.image.json`));
        image = "<provisioned image: built at the first launch>";
        try {
          if (record) image = (JSON.parse(record) as { image: string }).image;
        } catch {
          // keep the placeholder
        }
      }
      let command: string[] | undefined;
      try {
        command = [
          "podman",
          ...runArgv({
            image,
            target: flake.targetAppPath,
            options: podmanOptions(flake.runtime.podman, { env: ctx.env, removeAfterRun: !persistent }),
            tty: false,
            appArgs: [],
          }),
        ];
      } catch {
        command = undefined;
      }
      const view = { name, files: sources.map((s) => s.file), flake, command };
      if (opts.json) out(`${JSON.stringify(view, null, 2)}\n`);
      else out(renderYaml(view));
    });

  addFirecrackerCommands(program, ctx, (code) => (result = code));

  program
    .command("list")
    .description("list registered flakes")
    .option("--json", "one JSON array with engine, image and paths")
    .option("--user", "the user's flakes (~/.config/flakes.yml)")
    .action(async (opts: { json?: boolean; user?: boolean }) => {
      const setup = await loadFlakesSetup(ctx, { user: Boolean(opts.user) });
      const names = await listFlakeNames(setup);
      if (opts.json)
        out(
          `${JSON.stringify(
            names.map((n) => describeFlake(setup, n)),
            null,
            2,
          )}\n`,
        );
      else for (const n of names) out(`${n}\n`);
    });

  program
    .command("init")
    .description("create the flake directories (with --user: also ~/.config/flakes.yml)")
    .option("--user", "set up the calling user's flakes")
    .action(async (opts: { user?: boolean }) => {
      if (opts.user && !ctx.env.FLAKES_CONFIG) {
        const path = userFlakesConfigPath(ctx.env);
        if (!(await fileExists(path))) {
          const home = ctx.env.HOME ?? userInfo().homedir;
          const data = join(ctx.env.XDG_DATA_HOME ?? join(home, ".local", "share"), "flakes");
          const ids = join(ctx.env.XDG_RUNTIME_DIR ?? `/tmp/flakes-${userInfo().uid}`, "flakes");
          const text = renderYaml({
            generic: { flakes_dir: data, podman_ids_dir: ids, firecracker_ids_dir: ids },
          });
          await ensureDir(dirname(path));
          await atomicWriteFile(path, text);
          out(`wrote ${path}\n`);
        }
      }
      const setup = await loadFlakesSetup(ctx, { user: Boolean(opts.user) });
      for (const dir of [setup.config.flakesDir, setup.config.podmanIdsDir]) {
        await ensureDir(dir);
        out(`ready: ${dir}\n`);
      }
    });

  const early = await parseProgram(program, normaliseArgv(argv));
  return early ?? result;
}
