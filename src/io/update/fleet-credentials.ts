/**
 * `fleet --getkey`, both ways. Through the `fleet` flake (the seed's way):
 * podman-pilot's launch runs the container that holds the credentials, and
 * the container writes them into files the host made for it (mode 0600).
 * Directly (today's command, the fallback when podman cannot run: not
 * installed, no read-only store, no fleet image or flake in it): the files
 * the root keeps under /usr/share/eos/fleet/ are copied. Both write the same
 * targets with the same mode, so os-update cannot tell which one ran.
 */
import { accessSync, constants, existsSync, readFileSync, statfsSync } from "node:fs";
import { chmod, mkdir, open, readFile } from "node:fs/promises";
import { delimiter, dirname, join } from "node:path";
import { EosError, errorMessage } from "../../core/errors.ts";
import { GRAPHROOT, READ_ONLY_STORE, containerReference, storageConf } from "../../core/image/containers.ts";
import {
  FLEET_CREDENTIALS,
  FLEET_FLAKES_CONFIG,
  FLEET_NAME,
  FLEET_SOURCE_DIR,
} from "../../core/image/fleet.ts";
import { sysPath, type Context } from "../context.ts";
import { atomicWriteFile } from "../files.ts";

export interface Installed {
  what: string;
  path: string;
}

/** Today's command: copies the credentials found in `from` to their targets, atomically, mode 0600. */
export async function installDirect(ctx: Context, from: string): Promise<Installed[]> {
  const installed: Installed[] = [];
  for (const { file, target, what } of FLEET_CREDENTIALS) {
    const data = await readFile(join(from, file)).catch(() => undefined);
    if (data === undefined) continue;
    const path = sysPath(ctx, target);
    await mkdir(dirname(path), { recursive: true, mode: 0o755 });
    await atomicWriteFile(path, data, 0o600);
    await chmod(path, 0o600);
    installed.push({ what, path: target });
  }
  if (installed.length === 0) {
    throw new EosError("NOT_FOUND", `no fleet credentials in ${from} (expected id_fleet and/or token)`, {
      hint: "the image's description must provide them",
    });
  }
  return installed;
}

function onPath(env: NodeJS.ProcessEnv, name: string): boolean {
  for (const dir of (env.PATH ?? "").split(delimiter)) {
    if (!dir) continue;
    try {
      accessSync(join(dir, name), constants.X_OK);
      return true;
    } catch {
      // not in this directory
    }
  }
  return false;
}

/**
 * Why the flake cannot run here, or undefined when it can: cheap checks, no
 * podman call. `quiet` when the image has no fleet flake at all (nothing to
 * say: the direct copy is this image's way).
 */
export async function flakeUnavailable(
  ctx: Context,
): Promise<{ reason: string; quiet: boolean } | undefined> {
  const { loadFlakesSetup } = await import("../flakes/flake-files.ts");
  const setup = await loadFlakesSetup(flakeContext(ctx)).catch(() => undefined);
  const flakeFile = setup && join(setup.config.flakesDir, `${FLEET_NAME}.yaml`);
  if (!flakeFile || !existsSync(flakeFile)) return { reason: `no ${FLEET_NAME} flake`, quiet: true };
  const why = storeUnavailable(ctx);
  return why === undefined ? undefined : { reason: why, quiet: false };
}

function storeUnavailable(ctx: Context): string | undefined {
  if (!onPath(ctx.env, "podman")) return "podman is not installed";
  const images = sysPath(ctx, join(READ_ONLY_STORE, "overlay-images", "images.json"));
  let text = "";
  try {
    text = readFileSync(images, "utf8");
  } catch {
    return `no read-only container store (${images})`;
  }
  if (!text.includes(JSON.stringify(containerReference(FLEET_NAME))))
    return `no ${containerReference(FLEET_NAME)} in the read-only container store`;
  return undefined;
}

/**
 * The target of each credential the root has, made (empty) if missing and
 * mode 0600: the flake mounts exactly these files, and a bind mount needs
 * its source to exist. An existing file keeps its content until the
 * container writes it.
 */
async function prepareTargets(ctx: Context): Promise<void> {
  for (const { file, target } of FLEET_CREDENTIALS) {
    if (!existsSync(sysPath(ctx, join(FLEET_SOURCE_DIR, file)))) continue;
    const path = sysPath(ctx, target);
    await mkdir(dirname(path), { recursive: true, mode: 0o755 });
    await (await open(path, "a", 0o600)).close();
    await chmod(path, 0o600);
  }
}

/** The image's own flakes.yml (the fleet flake's), unless the caller names one (FLAKES_CONFIG). */
function flakeContext(ctx: Context): Context {
  if (ctx.env.FLAKES_CONFIG) return ctx;
  return { ...ctx, env: { ...ctx.env, FLAKES_CONFIG: sysPath(ctx, FLEET_FLAKES_CONFIG) } };
}

/** statfs f_type of overlayfs (linux/magic.h). */
const OVERLAYFS_MAGIC = 0x794c7630;
/** The fleet container's graph when the registry's cannot serve (tmpfs: gone at power-off). */
export const FLEET_RUN_GRAPHROOT = "/run/eos/fleet-containers";
const FLEET_RUN_STORAGE_CONF = "/run/eos/fleet-storage.conf";

function onOverlayfs(path: string): boolean {
  for (let dir = path; ; dir = dirname(dir)) {
    try {
      return statfsSync(dir).type === OVERLAYFS_MAGIC;
    } catch {
      if (dir === dirname(dir)) return false;
    }
  }
}

/**
 * Without the writable registry (not activated, or no p.spare) podman's
 * graphroot is in the root's overlay, where its overlay driver refuses to
 * run ("'overlay' is not supported over overlayfs"). The fleet container
 * only reads the image's store, so its graph can live in /run instead.
 */
async function storageContext(ctx: Context): Promise<Context> {
  if (ctx.env.CONTAINERS_STORAGE_CONF || !onOverlayfs(sysPath(ctx, GRAPHROOT))) return ctx;
  const conf = sysPath(ctx, FLEET_RUN_STORAGE_CONF);
  await mkdir(dirname(conf), { recursive: true, mode: 0o755 });
  await atomicWriteFile(
    conf,
    storageConf(sysPath(ctx, FLEET_RUN_GRAPHROOT), sysPath(ctx, READ_ONLY_STORE)),
    0o644,
  );
  ctx.stderr.write(
    `fleet: ${GRAPHROOT} is on overlayfs (no flake registry): the container's graph is in /run\n`,
  );
  return { ...ctx, env: { ...ctx.env, CONTAINERS_STORAGE_CONF: conf } };
}

/** Exit codes of podman's own failures (not the app's): run it directly instead. */
const PODMAN_FAILED = new Set([125, 126, 127]);

/**
 * Runs the fleet flake through podman-pilot's launch (in this process: one
 * node start, one podman run). Returns the app's exit code, or undefined
 * when podman failed and the direct copy should run.
 */
export async function getkeyThroughFlake(ctx: Context, args: string[]): Promise<number | undefined> {
  try {
    await prepareTargets(ctx);
    const { launchContainerFlake } = await import("../flakes/container-launch.ts");
    const code = await launchContainerFlake(FLEET_NAME, args, flakeContext(await storageContext(ctx)));
    if (!PODMAN_FAILED.has(code)) return code;
    ctx.stderr.write(`fleet: the ${FLEET_NAME} flake did not run (podman exit ${code}): copying directly\n`);
  } catch (error) {
    ctx.stderr.write(
      `fleet: the ${FLEET_NAME} flake did not run (${errorMessage(error)}): copying directly\n`,
    );
  }
  return undefined;
}
