/**
 * `flake-ctl`: register, remove and inspect flakes, with flake-pilot's
 * commands and flags: `podman` (container flakes), `firecracker` (VM
 * flakes), `list` and `init`.
 */
import type { Command } from "commander";
import { assertHostPath, baseName, normaliseFlakeCtlArgv } from "../core/flakes/flake-config.ts";
import { renderYaml } from "../core/flakes/flake-yaml.ts";
import { formatRows, parseListFormat, type Row } from "../core/flakes/listing.ts";
import { EOS_VERSION } from "../core/version.ts";
import type { Context } from "../io/context.ts";
import {
  assertImageRef,
  imageRegistrationInfo,
  registerContainerFlake,
  removeContainerFlake,
  removeImageAndFlakes,
  resolveOciArchive,
  showContainerFlake,
  type RegisterOptions,
} from "../io/flakes/container-flakes.ts";
import { initFlakes, loadFlakesSetup } from "../io/flakes/flake-files.ts";
import { listContainerInstances, listVmInstances, type InstanceView } from "../io/flakes/instances.ts";
import { flakePodman } from "../io/flakes/podman.ts";
import { listFlakes } from "../io/flakes/registration.ts";
import { vmImagesDir, listVmImages, pullVmImage } from "../io/flakes/vm-images.ts";
import {
  listVmFlakes,
  loadVmFlake,
  registerVmFlake,
  removeVmFlake,
  removeVmImageAndFlakes,
  type VmRegisterOptions,
} from "../io/flakes/vm-flakes.ts";
import { newProgram, parseProgram, usageError } from "./main.ts";
import {
  JSON_OUT,
  FORMAT,
  SHOW_APP,
  REMOVE_FORCE,
  USER,
  PODMAN_REGISTER,
  VM_REGISTER,
  VM_PULL,
  type CommandSpec,
} from "../core/flakes/flake-ctl-spec.ts";

function sub(parent: Command, name: string, [description, ...options]: CommandSpec): Command {
  const cmd = parent.command(name).description(description);
  for (const [flags, text, kind] of options) {
    if (kind === "required") cmd.requiredOption(flags, text);
    else if (kind === "repeatable") cmd.option(flags.replace(/>$/, "...>"), text);
    else cmd.option(flags, text);
  }
  return cmd;
}

const INSTANCE_COLUMNS = ["flake", "instance", "status", "id", "file"];

type ShowOpts = { app?: string; json?: boolean; format?: string };
const shownName = (nameArg: string | undefined, opts: ShowOpts) =>
  opts.app ? baseName(assertHostPath(opts.app, "--app")) : nameArg;

export async function flakeCtlMain(argv: string[], ctx: Context): Promise<number> {
  const program = newProgram("flake-ctl", ctx)
    .description("manage flakes: host commands that run in a container or VM")
    .version(EOS_VERSION, "-V, --version", "print the version");
  let result = 0;
  const out = (s: string): void => void ctx.stdout.write(s);
  const print = (view: unknown, json: boolean | undefined) =>
    out(json ? `${JSON.stringify(view, null, 2)}\n` : renderYaml(view));
  /** One flake: YAML, or JSON with --json / --format json. */
  const printOne = (view: unknown, opts: ShowOpts) => {
    if (opts.format !== undefined && opts.format !== "json" && opts.format !== "yaml")
      throw usageError(`--format ${opts.format}: one flake is shown as yaml or json`);
    print(view, opts.json || opts.format === "json");
  };
  /** The flakes, then their running instances (flake-pilot's id files), in one format. */
  const printTables = (flakes: Row[], columns: string[], instances: InstanceView[], opts: ShowOpts) => {
    const format = parseListFormat(opts.format, opts.json) ?? "table";
    if (format === "json") return print({ flakes, instances }, true);
    out(formatRows(flakes, columns, format));
    out(format === "csv" ? "\r\n" : "\n");
    if (format === "table" && instances.length === 0) return out("no instances\n");
    out(formatRows(instances as unknown as Row[], INSTANCE_COLUMNS, format));
  };
  const engine = (name: string, description: string) => {
    const cmd = sub(program, name, [description, USER]);
    return { cmd, setup: () => loadFlakesSetup(ctx, { user: Boolean(cmd.opts<{ user?: boolean }>().user) }) };
  };
  const exactlyOne = (a: unknown, b: unknown, what: string) => {
    if ((a === undefined) === (b === undefined)) throw usageError(`give exactly one of ${what}`);
  };

  const podman = engine("podman", "container flakes");
  sub(podman.cmd, "register", PODMAN_REGISTER).action(async (opts: RegisterOptions) => {
    const setup = await podman.setup();
    if (opts.info) return out(await imageRegistrationInfo(ctx, setup, opts.container));
    const done = await registerContainerFlake(ctx, setup, opts);
    out(`registered ${done.name}: ${done.link} -> ${done.pilot} (${done.file})\n`);
  });
  sub(podman.cmd, "remove", [
    "remove a flake (--app) or every flake of an image and the image (--container)",
    SHOW_APP,
    ["--container <image>", "image: remove its flakes and the image"],
    REMOVE_FORCE,
  ]).action(async (opts: { app?: string; container?: string; force?: boolean }) => {
    const setup = await podman.setup();
    exactlyOne(opts.app, opts.container, "--app or --container");
    if (opts.app !== undefined) {
      const done = await removeContainerFlake(ctx, setup, opts.app, Boolean(opts.force));
      return done.removed ? out(`removed ${done.name}\n`) : undefined;
    }
    for (const name of await removeImageAndFlakes(ctx, setup, opts.container ?? "")) out(`removed ${name}\n`);
    out(`removed image ${opts.container}\n`);
  });
  sub(podman.cmd, "pull", [
    "pull an image into the local podman storage (no prune)",
    ["--uri <uri>", "image reference", "required"],
  ]).action(async (opts: { uri: string }) => {
    assertImageRef(opts.uri, "--uri");
    const p = flakePodman(ctx, await podman.setup(), "flake-ctl");
    result = await p.launch(["pull", opts.uri], { stdio: ["ignore", "inherit", "inherit"] });
  });
  sub(podman.cmd, "load", [
    "load an OCI/docker archive into the local podman storage",
    ["--oci <file>", "archive (a missing path is a prefix: the highest match loads)", "required"],
  ]).action(async (opts: { oci: string }) => {
    const file = await resolveOciArchive(opts.oci);
    const p = flakePodman(ctx, await podman.setup(), "flake-ctl");
    result = await p.launch(["load", "-i", file], { stdio: ["ignore", "inherit", "inherit"] });
  });
  sub(podman.cmd, "show", [
    "show container flakes and their instances, or one flake's merged configuration and launch command",
    SHOW_APP,
    JSON_OUT,
    FORMAT,
  ])
    .argument("[name]", "flake name (or use --app)")
    .action(async (nameArg: string | undefined, opts: ShowOpts) => {
      const setup = await podman.setup();
      const name = shownName(nameArg, opts);
      if (name) return printOne(await showContainerFlake(ctx, setup, name), opts);
      const all = await listFlakes(setup, { engine: "podman" });
      const rows = all.map((d) => ({ name: d.name, image: d.image, app: d.host_app_path, base: d.base }));
      printTables(rows, ["name", "image", "app", "base"], await listContainerInstances(ctx, setup), opts);
    });

  const fc = engine("firecracker", "VM flakes (Firecracker, or QEMU with the same images)");
  sub(fc.cmd, "pull", VM_PULL).action(
    async (opts: Omit<Parameters<typeof pullVmImage>[2], "force"> & { force?: boolean }) => {
      const done = await pullVmImage(ctx, vmImagesDir(ctx), { ...opts, force: Boolean(opts.force) });
      const checked = done.verified.length > 0 ? ` (sha256 verified: ${done.verified.join(", ")})` : "";
      out(`pulled ${opts.name} into ${done.dir}${checked}\n`);
    },
  );
  sub(fc.cmd, "register", VM_REGISTER).action(
    async (opts: VmRegisterOptions & { net?: boolean; mem?: string; vcpus?: string }) => {
      if (opts.app === undefined) throw usageError("--app is required");
      const setup = await fc.setup();
      const done = await registerVmFlake(ctx, setup, {
        ...opts,
        noNet: opts.net === false,
        memSizeMib: opts.mem,
        vcpuCount: opts.vcpus,
      });
      out(`registered ${done.name}: ${done.link} -> ${done.pilot} (${done.file})\n`);
    },
  );
  sub(fc.cmd, "remove", [
    "remove a VM flake (--app), or an image and every flake on it (--vm)",
    SHOW_APP,
    ["--vm <name>", "image: remove its flakes and the image"],
    REMOVE_FORCE,
  ]).action(async (opts: { app?: string; vm?: string; force?: boolean }) => {
    const setup = await fc.setup();
    exactlyOne(opts.app, opts.vm, "--app or --vm");
    if (opts.app !== undefined) {
      const done = await removeVmFlake(ctx, setup, opts.app, Boolean(opts.force));
      return done.removed ? out(`removed ${done.name}\n`) : undefined;
    }
    for (const name of await removeVmImageAndFlakes(ctx, setup, opts.vm ?? "")) out(`removed ${name}\n`);
    out(`removed image ${opts.vm}\n`);
  });
  sub(fc.cmd, "show", [
    "show VM images, flakes and instances, or one flake's merged configuration",
    SHOW_APP,
    JSON_OUT,
    FORMAT,
  ])
    .argument("[name]", "flake name (or use --app)")
    .action(async (nameArg: string | undefined, opts: ShowOpts) => {
      const setup = await fc.setup();
      const name = shownName(nameArg, opts);
      const warn = (line: string) => void ctx.stderr.write(`flake-ctl: warning: ${line}\n`);
      if (name) return printOne({ name, ...loadVmFlake(setup, name, warn) }, opts);
      const images = new Set(await listVmImages(vmImagesDir(ctx)));
      const rows: Row[] = (await listVmFlakes(setup)).map((f) => ({
        name: f.name,
        image: f.image,
        app: f.app,
      }));
      // Pulled images no flake uses yet are listed too, with no name.
      for (const f of rows) images.delete(String(f.image));
      for (const image of images) rows.push({ name: null, image, app: null });
      printTables(rows, ["name", "image", "app"], await listVmInstances(setup), opts);
    });

  sub(program, "list", [
    "list registered flakes (names; --format for a table, JSON or CSV with engine, image and paths)",
    ["--json", "the same as --format json"],
    ["--format <format>", "table, json or csv"],
    ["--user", "the user's flakes (~/.config/flakes.yml)"],
  ]).action(async (opts: { json?: boolean; user?: boolean; format?: string }) => {
    const format = parseListFormat(opts.format, opts.json);
    const flakes = await listFlakes(await loadFlakesSetup(ctx, { user: Boolean(opts.user) }));
    if (format === "json") return print(flakes, true);
    if (format === undefined) return flakes.forEach((f) => out(`${f.name}\n`));
    const columns = ["name", "engine", "image", "host_app_path", "target_app_path", "base", "error"];
    out(formatRows(flakes as unknown as Row[], columns, format));
  });
  sub(program, "init", [
    "create the flake directories (with --user: also ~/.config/flakes.yml)",
    ["--user", "set up the calling user's flakes"],
    ["--force", "write flakes.yml anew even if it exists (flake-pilot's defaults)"],
  ]).action(async (opts: { user?: boolean; force?: boolean }) => {
    for (const line of await initFlakes(ctx, Boolean(opts.user), Boolean(opts.force))) out(`${line}\n`);
  });

  const early = await parseProgram(program, normaliseFlakeCtlArgv(argv));
  return early ?? result;
}
