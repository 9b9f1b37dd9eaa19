/**
 * Container flakes: register (NAME.yaml with a `container:` section and a
 * link to podman-pilot), remove (with the provisioned image of a delta
 * flake), show, and the images they run on (load, pull, the registration
 * info an image carries). A flake never pulls at launch, so registration
 * checks that every image it names is already in the local storage.
 */
import { readdir } from "node:fs/promises";
import { userInfo } from "node:os";
import { basename, dirname, join } from "node:path";
import { EosError } from "../../core/errors.ts";
import {
  assertFlakeName,
  assertHostPath,
  baseName,
  type FlakeSource,
} from "../../core/flakes/flake-config.ts";
import {
  needsProvisioning,
  normaliseRegisterOption,
  podmanOptions,
  runArgv,
  type ContainerFlake,
} from "../../core/flakes/container.ts";
import { parseContainerFlake, renderContainerFlake } from "../../core/flakes/flake-yaml.ts";
import type { Context } from "../context.ts";
import { fileExists } from "../files.ts";
import { readFlakeSources, readTextFile, removePath, type FlakesSetup } from "./flake-files.ts";
import { idsDirFor } from "./instance-files.ts";
import { flakePodman } from "./podman.ts";
import {
  checkRegistrable,
  installFlake,
  listFlakes,
  resolvePilot,
  unregisterFlake,
  type FlakeRemover,
} from "./registration.ts";

const IMAGE_REF = /^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$/;

export function assertImageRef(ref: string, what: string): string {
  if (!IMAGE_REF.test(ref)) {
    throw new EosError("USAGE", `${what} ${JSON.stringify(ref)} is not a container image name`);
  }
  return ref;
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
  /** undefined: on with --base (flake-pilot's default), off otherwise; false: --no-check-host-dependencies. */
  checkHostDependencies?: boolean;
  force?: boolean;
  info?: boolean;
}

export async function registerContainerFlake(
  ctx: Context,
  setup: FlakesSetup,
  opts: RegisterOptions,
): Promise<{ name: string; file: string; link: string; pilot: string; flake: ContainerFlake }> {
  assertImageRef(opts.container, "--container");
  if (opts.base !== undefined) assertImageRef(opts.base, "--base");
  for (const layer of opts.layer ?? []) assertImageRef(layer, "--layer");
  if (opts.app === undefined) throw new EosError("USAGE", "--app is required (or --info)");
  const app = assertHostPath(opts.app, "--app");
  // `--target ''` is how flake-pilot's docs ask for the image's entrypoint: the same as `/`.
  const target = opts.target === "" ? "/" : (opts.target ?? app);
  if (target !== "/") assertHostPath(target, "--target");
  if (/\s/.test(target))
    throw new EosError("USAGE", `--target ${JSON.stringify(target)} must not contain spaces`);
  const name = assertFlakeName(baseName(app), "flake name (the basename of --app)");
  if (opts.resume && opts.attach) throw new EosError("USAGE", "--resume and --attach exclude each other");
  if ((opts.layer?.length ?? 0) > 0 && !opts.base) throw new EosError("USAGE", "--layer needs --base");
  if (opts.resume && target === "/")
    throw new EosError("USAGE", "--resume needs --target (an app to exec), not /");
  for (const p of [...(opts.includeTar ?? []), ...(opts.includePath ?? [])]) assertHostPath(p, "--include-*");

  const flake: ContainerFlake = {
    name: opts.container,
    targetAppPath: target,
    hostAppPath: app,
    baseContainer: opts.base,
    layers: opts.layer ?? [],
    checkHostDependencies: opts.checkHostDependencies ?? opts.base !== undefined,
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
  await checkRegistrable(setup, name, app, "podman", Boolean(opts.force));

  // The images must be there: a flake never pulls at launch.
  const podman = flakePodman(ctx, setup, "flake-ctl");
  await podman.imageIds([opts.container, ...(opts.base ? [opts.base] : []), ...(opts.layer ?? [])]);
  for (const p of [...flake.include.tar, ...flake.include.path]) {
    if (!(await fileExists(p))) throw new EosError("NOT_FOUND", `include ${p} does not exist`);
  }

  const { pilot } = await resolvePilot(setup, "podman", ctx.argv0);
  const text = renderContainerFlake(flake);
  parseContainerFlake([{ file: `${name}.yaml`, text }]);
  const file = await installFlake(setup, name, text, app, pilot);
  return { name, file, link: app, pilot, flake };
}

/** `register --info`: the registration info (/NAME.yaml) an image carries. */
export async function imageRegistrationInfo(
  ctx: Context,
  setup: FlakesSetup,
  image: string,
): Promise<string> {
  assertImageRef(image, "--container");
  const podman = flakePodman(ctx, setup, "flake-ctl");
  await podman.imageIds([image]);
  const infoName = `${baseName(image).replace(/[:@].*$/, "")}.yaml`;
  const text = await podman.withImageMount(image, (dir) => readTextFile(join(dir, infoName)));
  if (text === undefined) throw new EosError("NOT_FOUND", `image ${image} carries no /${infoName}`);
  return text.endsWith("\n") ? text : `${text}\n`;
}

function provisionRecord(setup: FlakesSetup, name: string): string {
  return join(idsDirFor(setup.config.podmanIdsDir), `${name}.image.json`);
}

/** Removes a container flake: its provisioned image (best effort), link, NAME.yaml and NAME.d/. */
export const removeContainerFlake: FlakeRemover = (ctx, setup, app, force) =>
  unregisterFlake(setup, app, "podman", force, async (name) => {
    const record = provisionRecord(setup, name);
    const recorded = await readTextFile(record);
    if (!recorded) return;
    try {
      const image = (JSON.parse(recorded) as { image?: string }).image;
      if (image)
        await flakePodman(ctx, setup, "flake-ctl").output(["image", "rm", image], { allowFailure: true });
    } catch {
      // not ours to fix: a broken record is just removed
    }
    await removePath(record);
  });

/** `remove --container IMAGE`: every flake on the image, then the image. */
export async function removeImageAndFlakes(
  ctx: Context,
  setup: FlakesSetup,
  image: string,
): Promise<string[]> {
  assertImageRef(image, "--container");
  const removed: string[] = [];
  for (const flake of await listFlakes(setup, { engine: "podman", image })) {
    if (flake.host_app_path) await removeContainerFlake(ctx, setup, flake.host_app_path, true);
    else {
      await removePath(flake.file);
      await removePath(join(dirname(flake.file), `${flake.name}.d`), { recursive: true });
    }
    removed.push(flake.name);
  }
  const rm = await flakePodman(ctx, setup, "flake-ctl").output(["image", "rm", "--force", image], {
    allowFailure: true,
  });
  if (rm.code !== 0 && !/image not known/.test(rm.stderr)) {
    throw new EosError("PODMAN", `podman image rm ${image}: ${rm.stderr.trim()}`);
  }
  return removed;
}

/** `podman load --oci`: a missing path is a glob base; the highest match in sort order wins. */
export async function resolveOciArchive(path: string): Promise<string> {
  if (await fileExists(path)) return path;
  const dir = dirname(path);
  const prefix = basename(path);
  const matches = (await readdir(dir).catch(() => [] as string[])).filter((f) => f.startsWith(prefix)).sort();
  const last = matches[matches.length - 1];
  if (!last)
    throw new EosError("NOT_FOUND", `OCI archive ${path} does not exist (and nothing starts with it)`);
  return join(dir, last);
}

/** One flake's merged configuration and the podman command a launch runs, for `show`. */
export async function showContainerFlake(
  ctx: Context,
  setup: FlakesSetup,
  name: string,
): Promise<{ name: string; files: string[]; flake: ContainerFlake; command: string[] | undefined }> {
  assertFlakeName(name);
  const sources: FlakeSource[] = readFlakeSources(setup, name, (line) =>
    ctx.stderr.write(`flake-ctl: warning: ${line}\n`),
  );
  const flake = parseContainerFlake(sources);
  const persistent = flake.runtime.resume || flake.runtime.attach;
  // A delta/include flake runs its provisioned image (built at its first launch).
  let image = flake.name;
  if (needsProvisioning(flake)) {
    const record = await readTextFile(provisionRecord(setup, name));
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
  return { name, files: sources.map((s) => s.file), flake, command };
}
