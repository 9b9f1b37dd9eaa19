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

/**
 * flags, description, and how often it may be given. repeatable: several
 * values, in order, as flake-pilot (clap `multiple`) takes them: `--layer A B`
 * and `--layer A --layer B` alike.
 */
type OptionSpec = [string, string, ("required" | "repeatable")?];
/** A command's description, then its options. */
type CommandSpec = [string, ...OptionSpec[]];

const APP: OptionSpec = ["--app <path>", "absolute path of the command on the host"];
const FORCE: OptionSpec = ["--force", "replace an existing file at --app or another flake of the same name"];
const JSON_OUT: OptionSpec = ["--json", "machine-readable output (the same as --format json)"];
const FORMAT: OptionSpec = [
  "--format <format>",
  "table (default), json or csv; one flake: yaml (default) or json",
];
const SHOW_APP: OptionSpec = ["--app <path>", "host path of the flake"];
const REMOVE_FORCE: OptionSpec = ["--force", "remove --app even if it is not a link to the pilot"];
const USER: OptionSpec = ["--user", "use the user's flakes (~/.config/flakes.yml)"];

const PODMAN_REGISTER: CommandSpec = [
  "register a container app: NAME.yaml in flakes_dir and a link to podman-pilot",
  ["--container <image>", "app image in the local podman storage", "required"],
  APP,
  ["--target <path>", "path of the app in the container (default: --app; / or '' for the entrypoint)"],
  ["--base <image>", "base image: --container is a delta image on top of it"],
  ["--layer <image>", "layer between base and app (repeatable, in order)", "repeatable"],
  ["--opt <option>", "podman run option, e.g. '\\--net host' (repeatable)", "repeatable"],
  ["--resume", "keep one instance running; later calls exec into it"],
  ["--attach", "keep the instance; later calls attach to it"],
  ["--include-tar <file>", "tar archive unpacked on top of the container (repeatable)", "repeatable"],
  ["--include-path <path>", "host file or directory copied into the container (repeatable)", "repeatable"],
  ["--check-host-dependencies", "copy host files listed in the image's /removed in (default with --base)"],
  ["--no-check-host-dependencies", "with --base: do not copy host files listed in /removed"],
  FORCE,
  ["--info", "print the registration info (/NAME.yaml) the image carries, then stop (registers nothing)"],
];
const VM_REGISTER: CommandSpec = [
  "register a VM app: NAME.yaml in flakes_dir and a link to firecracker-pilot",
  ["--vm <name>", "pulled VM image", "required"],
  APP,
  ["--target <path>", "path of the app in the VM (default: --app)"],
  ["--run-as <user>", "user the VM's engine runs as (runtime.runas; default: you)"],
  ["--overlay-size <size>", "writable overlay drive, e.g. 20GiB (default: the write layer is in memory)"],
  ["--resume", "keep the VM running; later calls run in it without booting"],
  ["--force-vsock", "writes sci_force_vsock=1 as flake-pilot (the pilot always uses its own channel)"],
  ["--no-net", "no network device in the VM (and no ip= boot argument)"],
  [
    "--include-tar <file>",
    "tar archive unpacked into the overlay (repeatable; needs --overlay-size)",
    "repeatable",
  ],
  [
    "--include-path <path>",
    "file or directory copied into the overlay (repeatable; needs --overlay-size)",
    "repeatable",
  ],
  ["--engine <engine>", "firecracker, qemu or auto (default: Firecracker where installed, else QEMU)"],
  ["--mem <MiB>", "memory of the VM (default 4096)"],
  ["--vcpus <n>", "vCPUs of the VM (default 2)"],
  FORCE,
];
const VM_PULL: CommandSpec = [
  "pull a VM image (KIS tarball, or rootfs + kernel [+ initrd]) into /var/lib/firecracker/images/NAME",
  ["--name <name>", "local name of the image", "required"],
  ["--kis-image <url>", "KIS tarball: rootfs image, *.kernel, optional *.initrd and *.sha256"],
  ["--rootfs <url>", "root file system image"],
  ["--kernel <url>", "kernel"],
  ["--initrd <url>", "initrd"],
  ["--force", "replace an image of the same name"],
];

/** A subcommand with its options from a table. */
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
