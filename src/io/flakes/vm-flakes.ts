/**
 * VM flakes: register (NAME.yaml with a `vm:` section and a link to
 * firecracker-pilot), remove (with the flake's resume VMs) and show.
 * Everything is checked before the first file is written, and a failed
 * registration removes what it wrote.
 */
import { userInfo } from "node:os";
import { EosError } from "../../core/errors.ts";
import { assertFlakeName, assertHostPath, baseName } from "../../core/flakes/flake-config.ts";
import { parseYamlMapping, renderYaml } from "../../core/flakes/flake-yaml.ts";
import { assertVmImageName } from "../../core/flakes/kis.ts";
import { parseOverlaySize } from "../../core/flakes/size.ts";
import {
  vmFlakeDocument,
  vmFlakeFromData,
  vmFlakeFromDocuments,
  registeredBootArgs,
  DEFAULT_MEM_MIB,
  DEFAULT_VCPUS,
  type VmEngine,
  type VmFlake,
} from "../../core/flakes/vm.ts";
import type { Context } from "../context.ts";
import { readFlakeSources, type FlakesSetup } from "./flake-files.ts";
import { idsDirFor } from "./instance-files.ts";
import { fileExists } from "../files.ts";
import {
  type FlakeRemover,
  checkRegistrable,
  installFlake,
  listFlakes,
  resolvePilot,
  unregisterFlake,
} from "./registration.ts";
import { removeVmInstances } from "./vm-instance.ts";
import { vmImagesDir, removeVmImage, requireVmImage } from "./vm-images.ts";

export interface VmRegisterOptions {
  vm: string;
  app?: string;
  target?: string;
  overlaySize?: string;
  resume?: boolean;
  forceVsock?: boolean;
  noNet?: boolean;
  includeTar?: string[];
  includePath?: string[];
  engine?: string;
  memSizeMib?: string;
  vcpuCount?: string;
  /** flake-ctl firecracker register --run-as USER (runtime.runas; default: the calling user). */
  runAs?: string;
  force?: boolean;
}

function wholeNumber(text: string | undefined, what: string, min: number, max: number): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max) {
    throw new EosError(
      "USAGE",
      `${what} ${JSON.stringify(text)} must be a whole number from ${min} to ${max}`,
    );
  }
  return Number(text);
}

export async function registerVmFlake(
  ctx: Context,
  setup: FlakesSetup,
  opts: VmRegisterOptions,
): Promise<{ name: string; file: string; link: string; flake: VmFlake; pilot: string }> {
  // Arguments first: nothing is written unless all of them are good.
  const imageName = assertVmImageName(opts.vm, "--vm");
  if (opts.app === undefined) throw new EosError("USAGE", "--app is required");
  const app = assertHostPath(opts.app, "--app");
  const target = opts.target ?? app;
  assertHostPath(target, "--target");
  if (/\s/.test(target))
    throw new EosError("USAGE", `--target ${JSON.stringify(target)} must not contain spaces`);
  const name = assertFlakeName(baseName(app), "flake name (the basename of --app)");
  if (opts.overlaySize !== undefined) parseOverlaySize(opts.overlaySize, "--overlay-size");
  const engine = opts.engine ?? "auto";
  if (!["auto", "firecracker", "qemu"].includes(engine)) {
    throw new EosError("USAGE", `--engine ${JSON.stringify(engine)}: use firecracker, qemu or auto`);
  }
  const memSizeMib = wholeNumber(opts.memSizeMib, "--mem", 32, 1024 * 1024) ?? DEFAULT_MEM_MIB;
  const vcpuCount = wholeNumber(opts.vcpuCount, "--vcpus", 1, 32) ?? DEFAULT_VCPUS;
  const includes = [...(opts.includeTar ?? []), ...(opts.includePath ?? [])];
  if (includes.length > 0 && opts.overlaySize === undefined) {
    // As flake-pilot: includes are written into the overlay, so there must be one.
    throw new EosError("USAGE", "--include-tar and --include-path need --overlay-size", {
      hint: "add e.g. --overlay-size 2GiB: the included files go to the VM's overlay drive",
    });
  }
  if (opts.runAs !== undefined && !/^(#\d+|[a-z_][a-z0-9_-]*\$?)$/i.test(opts.runAs))
    throw new EosError("USAGE", `--run-as ${JSON.stringify(opts.runAs)} is not a user name`);
  for (const p of includes) {
    assertHostPath(p, "--include-tar/--include-path");
    if (!(await fileExists(p))) throw new EosError("NOT_FOUND", `include ${p} does not exist`);
  }
  const image = await requireVmImage(vmImagesDir(ctx), imageName);

  const flake = vmFlakeFromData(
    vmFlakeDocument({
      name: imageName,
      targetAppPath: target,
      hostAppPath: app,
      baseVm: undefined,
      layers: [],
      runtime: {
        runas: opts.runAs ?? userInfo().username,
        resume: Boolean(opts.resume),
        forceVsock: Boolean(opts.forceVsock),
        engine: engine as VmEngine | "auto",
        network: !opts.noNet,
        qemu: { machine: "q35", accel: "auto" },
        firecracker: {
          bootArgs: registeredBootArgs(opts),
          overlaySize: opts.overlaySize,
          overlayBytes: undefined,
          rootfsImagePath: image.rootfs,
          kernelImagePath: image.kernel,
          initrdPath: image.hasInitrd ? image.initrd : undefined,
          memSizeMib,
          vcpuCount,
          cacheType: "Writeback",
        },
      },
      include: { tar: opts.includeTar ?? [], path: opts.includePath ?? [] },
    }),
    "register",
  );

  await checkRegistrable(setup, name, app, "firecracker", Boolean(opts.force));

  const { pilot } = await resolvePilot(setup, "firecracker", ctx.argv0);
  const text = renderYaml(vmFlakeDocument(flake));
  vmFlakeFromDocuments([{ file: `${name}.yaml`, data: parseYamlMapping(text, `${name}.yaml`) }]);
  const file = await installFlake(setup, name, text, app, pilot);
  return { name, file, link: app, flake, pilot };
}

/** The registered VM flakes (optionally only those on image `vm`). */
export async function listVmFlakes(
  setup: FlakesSetup,
  vm?: string,
): Promise<Array<{ name: string; image: string; app: string | undefined }>> {
  const flakes = await listFlakes(setup, {
    engine: "firecracker",
    ...(vm === undefined ? {} : { image: vm }),
  });
  return flakes.map((f) => ({ name: f.name, image: f.image ?? "", app: f.host_app_path ?? undefined }));
}

/** Removes a VM flake: its resume VMs and their overlays, its link, NAME.yaml and NAME.d/. */
export const removeVmFlake: FlakeRemover = (ctx, setup, app, force) =>
  unregisterFlake(setup, app, "firecracker", force, async (name) => {
    await removeVmInstances(ctx.proc, idsDirFor(setup.config.firecrackerIdsDir), name);
  });

/** The merged VM flake for `show`. */
export function loadVmFlake(
  setup: FlakesSetup,
  name: string,
  warn?: (line: string) => void,
): { files: string[]; flake: VmFlake } {
  const sources = readFlakeSources(setup, name, warn);
  const flake = vmFlakeFromDocuments(
    sources.map((s) => ({ file: s.file, data: parseYamlMapping(s.text, s.file) })),
  );
  return { files: sources.map((s) => s.file), flake };
}

/** `remove --vm IMAGE`: every flake on the image, then the pulled image. */
export async function removeVmImageAndFlakes(
  ctx: Context,
  setup: FlakesSetup,
  vm: string,
): Promise<string[]> {
  const removed: string[] = [];
  for (const f of await listVmFlakes(setup, vm)) {
    if (f.app) await removeVmFlake(ctx, setup, f.app, true);
    removed.push(f.name);
  }
  if (!(await removeVmImage(vmImagesDir(ctx), vm)))
    throw new EosError("NOT_FOUND", `VM image ${vm} is not pulled`);
  return removed;
}
