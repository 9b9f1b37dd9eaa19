/**
 * A container flake's launch: one `podman run` on the caller's own stdio for
 * a plain flake; exec into a kept instance (resume) or attach to it; the
 * provisioned image of a delta flake built first when its inputs changed.
 * A TTY is used only when there is one.
 */
import { isatty } from "node:tty";
import { userInfo } from "node:os";
import { join } from "node:path";
import { EosError } from "../../core/errors.ts";
import { type FlakeSource } from "../../core/flakes/flake-config.ts";
import { parsePilotArgs, type PilotArgs } from "../../core/flakes/pilot-args.ts";
import {
  attachArgv,
  attachRunArgv,
  checkVolumes,
  cidFileName,
  execArgv,
  needsProvisioning,
  podmanOptions,
  resumeCreateArgv,
  runArgv,
  startAttachArgv,
  PODMAN_PILOT_OPTIONS,
  type ContainerFlake,
  type LaunchShape,
} from "../../core/flakes/container.ts";
import type { Context } from "../context.ts";
import { ensureDir, pathExistsSync, removePath } from "./flake-files.ts";
import {
  ensureOwnIdsDir,
  idsDirFor,
  readSmallFileSync,
  withLockFile,
  writeIdFile,
} from "./instance-files.ts";
import { ensureProvisionedImage } from "./provision.ts";
import { flakePodman, type Podman } from "./podman.ts";
import { loadPilotFlake } from "./pilot.ts";

const LABEL = "podman-pilot";

/** `runas` that differs from the calling user means podman runs through sudo. */
export function runasUser(runas: string | undefined): string | undefined {
  if (!runas || runas === "any") return undefined;
  const uid = process.getuid?.();
  if (uid === 0 && (runas === "root" || runas === "#0")) return undefined; // no passwd lookup on the common path
  const me = userInfo();
  if (runas === me.username || runas === `#${me.uid}`) return undefined;
  return runas;
}

interface Launch {
  name: string;
  flake: ContainerFlake;
  pilot: PilotArgs;
  podman: Podman;
  idsDir: string;
  tty: boolean;
  /** Podman in its own process group when stdin is not a terminal (see Podman.launch). */
  ownGroup: boolean;
}

async function parseFlake(sources: FlakeSource[]): Promise<ContainerFlake> {
  const { parseContainerFlake } = await import("../../core/flakes/flake-yaml.ts");
  return parseContainerFlake(sources);
}

export async function launchContainerFlake(name: string, args: string[], ctx: Context): Promise<number> {
  const { setup, flake } = await loadPilotFlake(ctx, name, "podman", parseFlake);
  const pilot = parsePilotArgs(args, PODMAN_PILOT_OPTIONS);
  const stdinTty = isatty(0);
  const launch: Launch = {
    name,
    flake,
    pilot,
    podman: flakePodman(ctx, setup, LABEL, runasUser(flake.runtime.runas)),
    // Only delta/include and resume/attach flakes keep state there; a plain launch skips the checks.
    idsDir:
      needsProvisioning(flake) || flake.runtime.resume || flake.runtime.attach
        ? await ensureOwnIdsDir(setup.config.podmanIdsDir)
        : idsDirFor(setup.config.podmanIdsDir),
    tty: pilot.options.has("interactive") || (stdinTty && isatty(1)),
    ownGroup: !stdinTty,
  };
  const image = needsProvisioning(flake)
    ? await ensureProvisionedImage(launch.podman, flake, name, {
        recordPath: join(launch.idsDir, `${name}.image.json`),
        progress: pilot.options.has("progress"),
        ignoreSyncError: pilot.options.has("ignore_sync_error"),
        log: ctx.stderr,
        label: `${LABEL}: ${name}`,
      })
    : flake.name;
  const persistent = flake.runtime.resume || flake.runtime.attach;
  const volumes = checkVolumes(
    podmanOptions(flake.runtime.podman, { env: ctx.env, removeAfterRun: !persistent }),
    pathExistsSync,
    pilot.options.has("ignore_missing_volume_path"),
  );
  const shape: LaunchShape = {
    image,
    target: flake.targetAppPath,
    options: volumes.args,
    tty: launch.tty,
    appArgs: pilot.appArgs,
  };
  if (flake.runtime.resume) return resumeLaunch(launch, shape);
  if (flake.runtime.attach) return attachLaunch(launch, shape);
  return launch.podman.launch(runArgv(shape), { ownGroup: launch.ownGroup });
}

function cidPath(launch: Launch): string {
  return join(launch.idsDir, cidFileName(launch.name, launch.pilot.instance));
}

async function forget(launch: Launch, cid: string | undefined): Promise<void> {
  if (cid) await launch.podman.removeContainer(cid);
  await removePath(cidPath(launch));
}

/** Resume: exec into the running instance; start it if stopped; create it if missing or stale. */
async function resumeLaunch(launch: Launch, shape: LaunchShape): Promise<number> {
  if (shape.target === "/") {
    throw new EosError(
      "CONFIG",
      `${launch.name}: a resume flake needs target_app_path (not /): exec runs it`,
    );
  }
  const file = cidPath(launch);
  const cid = await withLockFile(`${file}.lock`, async () => {
    let id = readSmallFileSync(file)?.trim() || undefined;
    if (id) {
      const state = await launch.podman.containerState(id);
      if (state === undefined) {
        await removePath(file); // stale: the instance is gone (reboot, podman rm)
        id = undefined;
      } else if (state !== "running") {
        const started = await launch.podman.output(["start", id], { allowFailure: true });
        if (started.code !== 0) {
          await forget(launch, id);
          id = undefined;
        }
      }
    }
    if (!id) {
      const created = await launch.podman.output(resumeCreateArgv(shape.image, shape.options));
      id = created.stdout.trim().split("\n").pop() ?? "";
      if (!/^[0-9a-f]{12,64}$/.test(id))
        throw new EosError("PODMAN", `podman run -d printed no container id`);
      await writeIdFile(file, `${id}\n`);
    }
    return id;
  });
  const code = await launch.podman.launch(execArgv(cid, shape.target, shape.tty, shape.appArgs), {
    ownGroup: launch.ownGroup,
  });
  if (launch.pilot.options.has("remove")) await forget(launch, cid);
  return code;
}

/** Attach: attach to the running instance; start a stopped one; else run a new, kept one. */
async function attachLaunch(launch: Launch, shape: LaunchShape): Promise<number> {
  const file = cidPath(launch);
  let cid = readSmallFileSync(file)?.trim() || undefined;
  let state: string | undefined;
  if (cid) {
    state = await launch.podman.containerState(cid);
    if (state === undefined) {
      await removePath(file);
      cid = undefined;
    }
  }
  const opts = { ownGroup: launch.ownGroup };
  let code: number;
  if (cid && state === "running") code = await launch.podman.launch(attachArgv(cid), opts);
  else if (cid) code = await launch.podman.launch(startAttachArgv(cid), opts);
  else {
    await ensureDir(launch.idsDir);
    code = await launch.podman.launch(attachRunArgv(shape, file), opts);
    cid = readSmallFileSync(file)?.trim() || undefined;
  }
  if (launch.pilot.options.has("remove")) await forget(launch, cid);
  return code;
}
