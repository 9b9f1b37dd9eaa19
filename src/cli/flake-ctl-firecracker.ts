/**
 * `flake-ctl firecracker pull|register|remove|show`: VM flakes. The work is
 * in io/vm-images.ts (the image store) and io/vm-registry.ts (flake files).
 */
import type { Command } from "commander";
import { EosError } from "../core/errors.ts";
import { assertFlakeName, assertHostPath, baseName } from "../core/flakes/flake-config.ts";
import { renderYaml } from "../core/flakes/flake-yaml.ts";
import type { Context } from "../io/context.ts";
import { loadFlakesSetup } from "../io/flakes/flake-files.ts";
import { fileExists } from "../io/files.ts";
import { imagesDir, listImages, pullImage, removeImage } from "../io/flakes/vm-images.ts";
import {
  listVmFlakes,
  loadVmFlake,
  registerVmFlake,
  removeVmFlake,
  type VmRegisterOptions,
} from "../io/flakes/vm-flake-files.ts";
import { removeVmInstances } from "./firecracker-pilot.ts";
import { usageError } from "./main.ts";

const collect = (value: string, previous: string[] = []) => [...previous, value];

export function addFirecrackerCommands(
  program: Command,
  ctx: Context,
  _setResult: (code: number) => void,
): void {
  const out = (s: string) => ctx.stdout.write(s);
  const fc = program
    .command("firecracker")
    .description("VM flakes (Firecracker, or QEMU with the same images)")
    .option("--user", "use the user's flakes (~/.config/flakes.yml)");
  const setupFor = () => loadFlakesSetup(ctx, { user: Boolean(fc.opts<{ user?: boolean }>().user) });

  fc.command("pull")
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
        const done = await pullImage(ctx, imagesDir(ctx), {
          name: opts.name,
          kisImage: opts.kisImage,
          rootfs: opts.rootfs,
          kernel: opts.kernel,
          initrd: opts.initrd,
          force: Boolean(opts.force),
        });
        const checked = done.verified.length > 0 ? ` (sha256 verified: ${done.verified.join(", ")})` : "";
        out(`pulled ${opts.name} into ${done.dir}${checked}\n`);
      },
    );

  fc.command("register")
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
        opts: Omit<VmRegisterOptions, "noNet" | "memSizeMib" | "vcpuCount"> & {
          net?: boolean;
          mem?: string;
          vcpus?: string;
        },
      ) => {
        const setup = await setupFor();
        const done = await registerVmFlake(ctx, setup, {
          ...opts,
          noNet: opts.net === false,
          memSizeMib: opts.mem,
          vcpuCount: opts.vcpus,
        });
        out(`registered ${done.name}: ${done.link} -> ${setup.config.firecrackerPilot} (${done.file})\n`);
        if (!(await fileExists(setup.config.firecrackerPilot))) {
          ctx.stderr.write(
            `flake-ctl: warning: ${setup.config.firecrackerPilot} does not exist yet (firecracker_pilot in ${setup.configPath})\n`,
          );
        }
      },
    );

  fc.command("remove")
    .description("remove a VM flake (--app), or an image and every flake on it (--vm)")
    .option("--app <path>", "host path of the flake")
    .option("--vm <name>", "image: remove its flakes and the image")
    .option("--force", "remove --app even if it is not a link to the pilot")
    .action(async (opts: { app?: string; vm?: string; force?: boolean }) => {
      const setup = await setupFor();
      if ((opts.app === undefined) === (opts.vm === undefined))
        throw usageError("give exactly one of --app or --vm");
      if (opts.app !== undefined) {
        const { name } = await removeVmFlake(setup, opts.app, Boolean(opts.force), removeVmInstances);
        out(`removed ${name}\n`);
        return;
      }
      const vm = opts.vm ?? "";
      for (const f of await listVmFlakes(setup, vm)) {
        if (f.app) await removeVmFlake(setup, f.app, true, removeVmInstances);
        out(`removed ${f.name}\n`);
      }
      if (!(await removeImage(imagesDir(ctx), vm))) {
        throw new EosError("NOT_FOUND", `VM image ${vm} is not pulled`);
      }
      out(`removed image ${vm}\n`);
    });

  fc.command("show")
    .description("show VM images and flakes, or one flake's merged configuration")
    .argument("[name]", "flake name (or use --app)")
    .option("--app <path>", "host path of the flake")
    .option("--json", "machine-readable output")
    .action(async (nameArg: string | undefined, opts: { app?: string; json?: boolean }) => {
      const setup = await setupFor();
      const name = opts.app ? baseName(assertHostPath(opts.app, "--app")) : nameArg;
      if (!name) {
        const view = { images: await listImages(imagesDir(ctx)), flakes: await listVmFlakes(setup) };
        if (opts.json) out(`${JSON.stringify(view, null, 2)}\n`);
        else {
          for (const i of view.images) out(`image\t${i}\n`);
          for (const f of view.flakes) out(`flake\t${f.name}\t${f.image}\t${String(f.app)}\n`);
        }
        return;
      }
      assertFlakeName(name);
      const { files, flake } = loadVmFlake(setup, name);
      const view = { name, files, flake };
      if (opts.json) out(`${JSON.stringify(view, null, 2)}\n`);
      else out(renderYaml(view));
    });
}
