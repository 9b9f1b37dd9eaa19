/**
 * `flake-ctl firecracker register/remove/show`: VM flake files (NAME.yaml
 * with a `vm:` section) and their links to firecracker-pilot. Everything is
 * checked before the first file is written, and a failed registration
 * removes what it wrote.
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
  DEFAULT_BOOT_ARGS,
  DEFAULT_MEM_MIB,
  DEFAULT_VCPUS,
  type VmEngine,
  type VmFlake,
} from "../../core/flakes/vm.ts";
import type { Context } from "../context.ts";
import {
  flakeFilePath,
  flakeFragmentDir,
  idsDirFor,
  installFlake,
  isPilotLink,
  listFlakeNames,
  pathKind,
  readFlakeSources,
  readLinkOrUndefined,
  readTextFile,
  removePath,
  type FlakesSetup,
} from "./flake-files.ts";
import { fileExists } from "../files.ts";
import { imagesDir, requireImage } from "./vm-images.ts";

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
): Promise<{ name: string; file: string; link: string; flake: VmFlake }> {
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
  for (const p of [...(opts.includeTar ?? []), ...(opts.includePath ?? [])]) {
    assertHostPath(p, "--include-tar/--include-path");
    if (!(await fileExists(p))) throw new EosError("NOT_FOUND", `include ${p} does not exist`);
  }
  const image = await requireImage(imagesDir(ctx), imageName);

  const flake = vmFlakeFromData(
    vmFlakeDocument({
      name: imageName,
      targetAppPath: target,
      hostAppPath: app,
      baseVm: undefined,
      layers: [],
      runtime: {
        runas: userInfo().username,
        resume: Boolean(opts.resume),
        forceVsock: Boolean(opts.forceVsock),
        engine: engine as VmEngine | "auto",
        network: !opts.noNet,
        qemu: { machine: "q35", accel: "auto" },
        firecracker: {
          bootArgs: [...DEFAULT_BOOT_ARGS],
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

  // Refuse to replace what is not ours.
  const file = flakeFilePath(setup, name);
  const kind = await pathKind(app);
  const linkTarget = kind === "symlink" ? await readLinkOrUndefined(app) : undefined;
  if (kind !== "missing" && !isPilotLink(linkTarget, setup) && !opts.force) {
    throw new EosError("REFUSED", `${app} exists and is not a flake`, {
      hint: "choose another --app, or pass --force to replace it",
    });
  }
  const previous = await readTextFile(file);
  if (previous !== undefined && !opts.force) {
    let other: unknown;
    try {
      const data = parseYamlMapping(previous, file);
      other =
        (data.vm as Record<string, unknown> | undefined)?.host_app_path ??
        (data.container as Record<string, unknown> | undefined)?.host_app_path;
    } catch {
      other = undefined;
    }
    if (other !== undefined && other !== app) {
      throw new EosError("REFUSED", `flake ${name} is already registered for ${String(other)} (${file})`, {
        hint: "remove it first (flake-ctl firecracker remove --app …) or pass --force",
      });
    }
  }

  const text = renderYaml(vmFlakeDocument(flake));
  vmFlakeFromDocuments([{ file, data: parseYamlMapping(text, file) }]);
  await installFlake(setup, name, file, text, app, setup.config.firecrackerPilot);
  return { name, file, link: app, flake };
}

function vmSection(setup: FlakesSetup, name: string): Record<string, unknown> | undefined {
  try {
    const sources = readFlakeSources(setup, name);
    let vm: Record<string, unknown> | undefined;
    for (const s of sources) {
      const data = parseYamlMapping(s.text, s.file);
      if (data.vm && typeof data.vm === "object")
        vm = { ...(vm ?? {}), ...(data.vm as Record<string, unknown>) };
    }
    return vm;
  } catch {
    return undefined;
  }
}

/** Names of the registered VM flakes (optionally only those on image `vm`). */
export async function listVmFlakes(
  setup: FlakesSetup,
  vm?: string,
): Promise<Array<{ name: string; image: string; app: string | undefined }>> {
  const out: Array<{ name: string; image: string; app: string | undefined }> = [];
  for (const name of await listFlakeNames(setup)) {
    const section = vmSection(setup, name);
    if (!section) continue;
    const image = String(section.name ?? "");
    if (vm !== undefined && image !== vm) continue;
    out.push({
      name,
      image,
      app: typeof section.host_app_path === "string" ? section.host_app_path : undefined,
    });
  }
  return out;
}

/**
 * Removes a VM flake: its link, NAME.yaml, NAME.d/, its resume VMs and their
 * overlays (`stopInstances` does that part).
 */
export async function removeVmFlake(
  setup: FlakesSetup,
  app: string,
  force: boolean,
  stopInstances: (idsDir: string, name: string) => Promise<string[]>,
): Promise<{ name: string }> {
  assertHostPath(app, "--app");
  const name = assertFlakeName(baseName(app), "flake name");
  const file = flakeFilePath(setup, name);
  const kind = await pathKind(app);
  const target = kind === "symlink" ? await readLinkOrUndefined(app) : undefined;
  if (!(await fileExists(file)) && kind === "missing") {
    throw new EosError("NOT_FOUND", `no flake registered for ${app} (${file} does not exist)`);
  }
  if ((await fileExists(file)) && !vmSection(setup, name) && !force) {
    throw new EosError("REFUSED", `${name} is not a VM flake (${file}); use flake-ctl podman remove`);
  }
  if (kind !== "missing" && !isPilotLink(target, setup) && !force) {
    throw new EosError("REFUSED", `${app} is not a link to a pilot; not removing it`, {
      hint: "pass --force",
    });
  }
  await stopInstances(idsDirFor(setup.config.firecrackerIdsDir), name);
  if (kind !== "missing") await removePath(app);
  await removePath(file);
  await removePath(flakeFragmentDir(setup, name), { recursive: true });
  return { name };
}

/** The merged VM flake for `show`. */
export function loadVmFlake(setup: FlakesSetup, name: string): { files: string[]; flake: VmFlake } {
  const sources = readFlakeSources(setup, name);
  const flake = vmFlakeFromDocuments(
    sources.map((s) => ({ file: s.file, data: parseYamlMapping(s.text, s.file) })),
  );
  return { files: sources.map((s) => s.file), flake };
}
