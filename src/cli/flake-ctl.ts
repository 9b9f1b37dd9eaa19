/**
 * `flake-ctl`: register, remove and inspect flakes, with flake-pilot's
 * commands and flags: `podman` (container flakes), `firecracker` (VM
 * flakes), `list` and `init`.
 */
import type { Command } from "commander";
import { EosError } from "../core/errors.ts";
import { assertHostPath, baseName } from "../core/flakes/flake-config.ts";
import { renderYaml } from "../core/flakes/flake-yaml.ts";
import type { Context } from "../io/context.ts";
import { fileExists } from "../io/files.ts";
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
import { initFlakes, loadFlakesSetup, type FlakesSetup } from "../io/flakes/flake-files.ts";
import { flakePodman } from "../io/flakes/podman.ts";
import { listFlakes } from "../io/flakes/registration.ts";
import { imagesDir, listImages, pullImage, removeImage } from "../io/flakes/vm-images.ts";
import { listVmFlakes, loadVmFlake, registerVmFlake, removeVmFlake } from "../io/flakes/vm-flakes.ts";
import { newProgram, parseProgram, usageError } from "./main.ts";

const collect = (value: string, previous: string[] = []) => [...previous, value];

/** flake-pilot spelled some flags with underscores. */
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

function engineCommand(program: Command, ctx: Context, name: string, description: string) {
  const cmd = program
    .command(name)
    .description(description)
    .option("--user", "use the user's flakes (~/.config/flakes.yml)");
  const setupFor = () => loadFlakesSetup(ctx, { user: Boolean(cmd.opts<{ user?: boolean }>().user) });
  return { cmd, setupFor };
}

function warnMissingPilot(ctx: Context, setup: FlakesSetup, pilot: string, key: string): Promise<void> {
  return fileExists(pilot).then((there) => {
    if (!there)
      ctx.stderr.write(`flake-ctl: warning: ${pilot} does not exist yet (${key} in ${setup.configPath})\n`);
  });
}

function print(ctx: Context, view: unknown, json: boolean | undefined): void {
  ctx.stdout.write(json ? `${JSON.stringify(view, null, 2)}\n` : renderYaml(view));
}

export async function flakeCtlMain(argv: string[], ctx: Context): Promise<number> {
  const program = newProgram("flake-ctl", ctx).description(
    "manage flakes: host commands that run in a container or VM",
  );
  let result = 0;
  const out = (s: string) => ctx.stdout.write(s);

  const podman = engineCommand(program, ctx, "podman", "container flakes");
  podman.cmd
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
      const setup = await podman.setupFor();
      if (opts.info) {
        out(await imageRegistrationInfo(ctx, setup, opts.container));
        if (opts.app === undefined) return;
      }
      const done = await registerContainerFlake(ctx, setup, opts);
      out(`registered ${done.name}: ${done.link} -> ${setup.config.podmanPilot} (${done.file})\n`);
      await warnMissingPilot(ctx, setup, setup.config.podmanPilot, "podman_pilot");
    });
  podman.cmd
    .command("remove")
    .description("remove a flake (--app) or every flake of an image and the image (--container)")
    .option("--app <path>", "host path of the flake")
    .option("--container <image>", "image: remove its flakes and the image")
    .option("--force", "remove --app even if it is not a link to the pilot")
    .action(async (opts: { app?: string; container?: string; force?: boolean }) => {
      const setup = await podman.setupFor();
      if ((opts.app === undefined) === (opts.container === undefined))
        throw usageError("give exactly one of --app or --container");
      if (opts.app !== undefined) {
        out(`removed ${(await removeContainerFlake(ctx, setup, opts.app, Boolean(opts.force))).name}\n`);
        return;
      }
      for (const name of await removeImageAndFlakes(ctx, setup, opts.container ?? ""))
        out(`removed ${name}\n`);
      out(`removed image ${opts.container}\n`);
    });
  podman.cmd
    .command("pull")
    .description("pull an image into the local podman storage (no prune)")
    .requiredOption("--uri <uri>", "image reference")
    .action(async (opts: { uri: string }) => {
      assertImageRef(opts.uri, "--uri");
      const p = flakePodman(ctx, await podman.setupFor(), "flake-ctl");
      result = await p.launch(["pull", opts.uri], { stdio: ["ignore", "inherit", "inherit"] });
    });
  podman.cmd
    .command("load")
    .description("load an OCI/docker archive into the local podman storage")
    .requiredOption("--oci <file>", "archive (a missing path is a prefix: the highest match loads)")
    .action(async (opts: { oci: string }) => {
      const file = await resolveOciArchive(opts.oci);
      const p = flakePodman(ctx, await podman.setupFor(), "flake-ctl");
      result = await p.launch(["load", "-i", file], { stdio: ["ignore", "inherit", "inherit"] });
    });
  podman.cmd
    .command("show")
    .description("show container flakes, or one flake's merged configuration and launch command")
    .argument("[name]", "flake name (or use --app)")
    .option("--app <path>", "host path of the flake")
    .option("--json", "machine-readable output")
    .action(async (nameArg: string | undefined, opts: { app?: string; json?: boolean }) => {
      const setup = await podman.setupFor();
      const name = opts.app ? baseName(assertHostPath(opts.app, "--app")) : nameArg;
      if (name) return print(ctx, await showContainerFlake(ctx, setup, name), opts.json);
      const all = await listFlakes(setup, { engine: "podman" });
      if (opts.json) out(`${JSON.stringify(all, null, 2)}\n`);
      else for (const d of all) out(`${d.name}\t${String(d.image)}\t${String(d.host_app_path)}\n`);
    });

  const fc = engineCommand(
    program,
    ctx,
    "firecracker",
    "VM flakes (Firecracker, or QEMU with the same images)",
  );
  fc.cmd
    .command("pull")
    .description(
      "pull a VM image (KIS tarball, or rootfs + kernel [+ initrd]) into /var/lib/firecracker/images/NAME",
    )
    .requiredOption("--name <name>", "local name of the image")
    .option("--kis-image <url>", "KIS tarball: rootfs image, *.kernel, optional *.initrd and *.sha256")
    .option("--rootfs <url>", "root file system image")
    .option("--kernel <url>", "kernel")
    .option("--initrd <url>", "initrd")
    .option("--force", "replace an image of the same name")
    .action(
      async (opts: {
        name: string;
        kisImage?: string;
        rootfs?: string;
        kernel?: string;
        initrd?: string;
        force?: boolean;
      }) => {
        const done = await pullImage(ctx, imagesDir(ctx), { ...opts, force: Boolean(opts.force) });
        const checked = done.verified.length > 0 ? ` (sha256 verified: ${done.verified.join(", ")})` : "";
        out(`pulled ${opts.name} into ${done.dir}${checked}\n`);
      },
    );
  fc.cmd
    .command("register")
    .description("register a VM app: NAME.yaml in flakes_dir and a link to firecracker-pilot")
    .requiredOption("--vm <name>", "pulled VM image")
    .option("--app <path>", "absolute path of the command on the host")
    .option("--target <path>", "path of the app in the VM (default: --app)")
    .option(
      "--overlay-size <size>",
      "writable overlay drive, e.g. 20GiB (default: the write layer is in memory)",
    )
    .option("--resume", "keep the VM running; later calls run in it without booting")
    .option(
      "--force-vsock",
      "accepted for flake-pilot compatibility: the pilot always talks to sci over its channel",
    )
    .option("--no-net", "no network device in the VM")
    .option("--include-tar <file>", "tar archive unpacked into the overlay (repeatable)", collect)
    .option("--include-path <path>", "host file or directory copied into the overlay (repeatable)", collect)
    .option(
      "--engine <engine>",
      "firecracker, qemu or auto (default: Firecracker where installed, else QEMU)",
    )
    .option("--mem <MiB>", "memory of the VM (default 4096)")
    .option("--vcpus <n>", "vCPUs of the VM (default 2)")
    .option("--force", "replace an existing file at --app or another flake of the same name")
    .action(
      async (
        opts: Parameters<typeof registerVmFlake>[2] & { net?: boolean; mem?: string; vcpus?: string },
      ) => {
        const setup = await fc.setupFor();
        const done = await registerVmFlake(ctx, setup, {
          ...opts,
          noNet: opts.net === false,
          memSizeMib: opts.mem,
          vcpuCount: opts.vcpus,
        });
        out(`registered ${done.name}: ${done.link} -> ${setup.config.firecrackerPilot} (${done.file})\n`);
        await warnMissingPilot(ctx, setup, setup.config.firecrackerPilot, "firecracker_pilot");
      },
    );
  fc.cmd
    .command("remove")
    .description("remove a VM flake (--app), or an image and every flake on it (--vm)")
    .option("--app <path>", "host path of the flake")
    .option("--vm <name>", "image: remove its flakes and the image")
    .option("--force", "remove --app even if it is not a link to the pilot")
    .action(async (opts: { app?: string; vm?: string; force?: boolean }) => {
      const setup = await fc.setupFor();
      if ((opts.app === undefined) === (opts.vm === undefined))
        throw usageError("give exactly one of --app or --vm");
      if (opts.app !== undefined) {
        out(`removed ${(await removeVmFlake(ctx, setup, opts.app, Boolean(opts.force))).name}\n`);
        return;
      }
      const vm = opts.vm ?? "";
      for (const f of await listVmFlakes(setup, vm)) {
        if (f.app) await removeVmFlake(ctx, setup, f.app, true);
        out(`removed ${f.name}\n`);
      }
      if (!(await removeImage(imagesDir(ctx), vm)))
        throw new EosError("NOT_FOUND", `VM image ${vm} is not pulled`);
      out(`removed image ${vm}\n`);
    });
  fc.cmd
    .command("show")
    .description("show VM images and flakes, or one flake's merged configuration")
    .argument("[name]", "flake name (or use --app)")
    .option("--app <path>", "host path of the flake")
    .option("--json", "machine-readable output")
    .action(async (nameArg: string | undefined, opts: { app?: string; json?: boolean }) => {
      const setup = await fc.setupFor();
      const name = opts.app ? baseName(assertHostPath(opts.app, "--app")) : nameArg;
      if (name) return print(ctx, { name, ...loadVmFlake(setup, name) }, opts.json);
      const view = { images: await listImages(imagesDir(ctx)), flakes: await listVmFlakes(setup) };
      if (opts.json) return print(ctx, view, true);
      for (const i of view.images) out(`image\t${i}\n`);
      for (const f of view.flakes) out(`flake\t${f.name}\t${f.image}\t${String(f.app)}\n`);
    });

  program
    .command("list")
    .description("list registered flakes")
    .option("--json", "one JSON array with engine, image and paths")
    .option("--user", "the user's flakes (~/.config/flakes.yml)")
    .action(async (opts: { json?: boolean; user?: boolean }) => {
      const flakes = await listFlakes(await loadFlakesSetup(ctx, { user: Boolean(opts.user) }));
      if (opts.json) out(`${JSON.stringify(flakes, null, 2)}\n`);
      else for (const f of flakes) out(`${f.name}\n`);
    });
  program
    .command("init")
    .description("create the flake directories (with --user: also ~/.config/flakes.yml)")
    .option("--user", "set up the calling user's flakes")
    .action(async (opts: { user?: boolean }) => {
      for (const line of await initFlakes(ctx, Boolean(opts.user))) out(`${line}\n`);
    });

  const early = await parseProgram(program, normaliseArgv(argv));
  return early ?? result;
}
