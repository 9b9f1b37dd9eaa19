/**
 * A VM flake's instance, from boot to removal. A plain launch boots the VM
 * (Firecracker, or QEMU with the same image), runs the command through the
 * guest init `sci`, and removes the VM and its throwaway overlay. A resume
 * flake keeps its VM (and overlay) running and sends later calls to it
 * without booting again; `%remove` and `flake-ctl firecracker remove` stop it.
 */
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { type FlakeSource } from "../../core/flakes/flake-config.ts";
import { parsePilotArgs } from "../../core/flakes/pilot-args.ts";
import {
  instanceKey,
  parsePortOption,
  DEFAULT_VSOCK_PORT,
  VM_PILOT_OPTIONS,
  type VmEngine,
  type VmFlake,
} from "../../core/flakes/vm.ts";
import type { Context } from "../context.ts";
import { killPid, pidAlive, stopStarted, type ProcessRunner } from "../process.ts";
import { removePath, writeFileAtomic } from "./flake-files.ts";
import { ensureOwnIdsDir, withLockFile } from "./instance-files.ts";
import { isDebug, loadPilotFlake } from "./pilot.ts";
import { connectChannel, runSession, type Channel } from "./sci-session.ts";
import { chooseEngine, isOurVm, removeTap, type VmProcess } from "./vm-engine.ts";
import { copyOverlay, overlayTemplate } from "./vm-overlay.ts";
import {
  bootVm,
  checkImage,
  checkSocketPath,
  cleanupVmDir,
  command,
  lostError,
  type Launch,
  type VmDir,
} from "./vm-boot.ts";

const LABEL = "firecracker-pilot";
/** How long a VM may take to boot to its guest init (TCG on a busy machine is slow). */
const BOOT_TIMEOUT_MS = 5 * 60_000;

async function parseFlake(sources: FlakeSource[]): Promise<VmFlake> {
  const { parseYamlMapping } = await import("../../core/flakes/flake-yaml.ts");
  const { vmFlakeFromDocuments } = await import("../../core/flakes/vm.ts");
  return vmFlakeFromDocuments(sources.map((s) => ({ file: s.file, data: parseYamlMapping(s.text, s.file) })));
}

export async function launchVmFlake(name: string, args: string[], ctx: Context): Promise<number> {
  const { setup, flake } = await loadPilotFlake(ctx, name, "firecracker", parseFlake);
  const pilot = parsePilotArgs(args, VM_PILOT_OPTIONS);
  const debug = isDebug(ctx.env);
  const { engine, binary } = chooseEngine(flake.runtime.engine, ctx.env);
  const launch: Launch = {
    ctx,
    name,
    key: instanceKey(name, pilot.instance),
    flake,
    pilot,
    engine,
    binary,
    idsDir: await ensureOwnIdsDir(setup.config.firecrackerIdsDir),
    debug,
    vsockPort: parsePortOption(pilot.options.get("port")) ?? DEFAULT_VSOCK_PORT,
    log: (line) => {
      if (debug) ctx.stderr.write(`${LABEL}: debug: ${line}\n`);
    },
  };
  await checkImage(launch);
  if (flake.runtime.resume) return resumeLaunch(launch);
  return singleLaunch(launch);
}

/** Boot, run one command, remove everything. */
async function singleLaunch(launch: Launch): Promise<number> {
  const base = join(launch.idsDir, "vm");
  await mkdir(base, { recursive: true, mode: 0o700 });
  const fc = launch.flake.runtime.firecracker;
  const template =
    fc.overlayBytes !== undefined
      ? await overlayTemplate(launch.ctx.proc, base, launch.name, {
          bytes: fc.overlayBytes,
          includeTar: launch.flake.include.tar,
          includePath: launch.flake.include.path,
        })
      : undefined;
  const dir = await mkdtemp(join(base, `${launch.key}.run-`));
  const vm: VmDir = {
    dir,
    socket: join(dir, launch.engine === "qemu" ? "sci.sock" : "vsock.sock"),
    consoleLog: join(dir, "console.log"),
    overlay: template ? join(dir, "overlay.img") : undefined,
    tap: undefined,
  };
  let proc: VmProcess | undefined;
  try {
    checkSocketPath(vm.socket);
    if (template && vm.overlay) await copyOverlay(launch.ctx.proc, template, vm.overlay);
    proc = await bootVm(launch, vm, false);
    const running = proc;
    let alive = true;
    void running.exited.then(() => (alive = false));
    const channel = await connectChannel(
      launch.engine,
      vm.socket,
      launch.vsockPort,
      () => alive,
      BOOT_TIMEOUT_MS,
    );
    const result = await runSession(channel, command(launch), launch.ctx, running.exited);
    if (result.status === "lost") throw await lostError(launch, vm, result.detail, running.stderr());
    return result.code;
  } finally {
    if (proc) await stopStarted(proc);
    if (launch.debug)
      launch.ctx.stderr.write(
        `${LABEL}: debug: console log:\n${await readFile(vm.consoleLog, "utf8").catch(() => "")}\n`,
      );
    await cleanupVmDir(launch.ctx.proc, vm, false);
  }
}

interface InstanceRecord {
  pid: number;
  engine: VmEngine;
  socket: string;
  vsockPort: number;
  tap?: string | undefined;
}

/** Resume: send the command to the running VM; boot it first if it is not running. */
async function resumeLaunch(launch: Launch): Promise<number> {
  const dir = join(launch.idsDir, "vm", launch.key);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const recordFile = join(dir, "instance.json");
  const fc = launch.flake.runtime.firecracker;
  const vm: VmDir = {
    dir,
    socket: join(dir, launch.engine === "qemu" ? "sci.sock" : "vsock.sock"),
    consoleLog: join(dir, "console.log"),
    overlay: fc.overlayBytes !== undefined ? join(dir, "overlay.img") : undefined,
    tap: undefined,
  };
  checkSocketPath(vm.socket);
  const started: { vm?: VmProcess } = {};
  const record = await withLockFile(join(dir, "start.lock"), async () => {
    const text = await readFile(recordFile, "utf8").catch(() => undefined);
    let rec: InstanceRecord | undefined;
    try {
      rec = text ? (JSON.parse(text) as InstanceRecord) : undefined;
    } catch {
      rec = undefined;
    }
    if (rec && rec.engine === launch.engine && isOurVm(rec.pid, rec.socket)) {
      launch.log(`resuming VM pid ${rec.pid}`);
      return rec;
    }
    if (rec) {
      // Stale: the VM is gone (host reboot, killed). Its overlay stays; its tap goes.
      launch.log(`instance record of pid ${rec.pid} is stale`);
      if (rec.tap) await removeTap(launch.ctx.proc, rec.tap);
      await removePath(recordFile);
    }
    if (
      vm.overlay &&
      !(await readFile(vm.overlay).then(
        () => true,
        () => false,
      ))
    ) {
      const template = await overlayTemplate(launch.ctx.proc, join(launch.idsDir, "vm"), launch.name, {
        bytes: fc.overlayBytes ?? 0,
        includeTar: launch.flake.include.tar,
        includePath: launch.flake.include.path,
      });
      await copyOverlay(launch.ctx.proc, template, vm.overlay);
    }
    await rm(vm.socket, { force: true });
    await writeFile(vm.consoleLog, "");
    let fresh: VmProcess;
    try {
      fresh = await bootVm(launch, vm, true);
    } catch (error) {
      if (vm.tap) await removeTap(launch.ctx.proc, vm.tap);
      throw error;
    }
    started.vm = fresh;
    const created: InstanceRecord = {
      pid: fresh.pid,
      engine: launch.engine,
      socket: vm.socket,
      vsockPort: launch.vsockPort,
      tap: vm.tap,
    };
    await writeFileAtomic(recordFile, `${JSON.stringify(created)}\n`, 0o600);
    return created;
  });
  const fresh = started.vm;
  const alive = () =>
    fresh
      ? fresh.child.exitCode === null && fresh.child.signalCode === null
      : isOurVm(record.pid, record.socket);
  let channel: Channel;
  try {
    channel = await connectChannel(record.engine, record.socket, record.vsockPort, alive, BOOT_TIMEOUT_MS);
  } catch (error) {
    await stopInstance(launch.ctx.proc, dir, record);
    throw error;
  }
  const vmGone = fresh ? fresh.exited : watchPid(record.pid);
  const result = await runSession(channel, command(launch), launch.ctx, vmGone);
  if (launch.pilot.options.has("remove")) await removeInstance(launch.ctx.proc, dir, record);
  if (result.status === "lost") {
    const err = await lostError(launch, vm, result.detail, fresh?.stderr() ?? "");
    if (!isOurVm(record.pid, record.socket)) await stopInstance(launch.ctx.proc, dir, record);
    throw err;
  }
  return result.code;
}

/** Resolves when `pid` is gone (polled; the resumed VM is not our child). */
function watchPid(pid: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setInterval(() => {
      if (!pidAlive(pid)) {
        clearInterval(timer);
        resolve();
      }
    }, 250);
    timer.unref();
  });
}

async function stopInstance(proc: ProcessRunner, dir: string, record: InstanceRecord): Promise<void> {
  if (isOurVm(record.pid, record.socket)) await killPid(record.pid);
  if (record.tap) await removeTap(proc, record.tap);
  await removePath(join(dir, "instance.json"));
}

/** `%remove`: stop the VM and delete its overlay and files. */
async function removeInstance(proc: ProcessRunner, dir: string, record: InstanceRecord): Promise<void> {
  await stopInstance(proc, dir, record);
  await rm(dir, { recursive: true, force: true });
}

/** For flake-ctl: stops every resume VM of flake `name` and removes their files. */
export async function removeVmInstances(
  proc: ProcessRunner,
  idsDir: string,
  name: string,
): Promise<string[]> {
  const base = join(idsDir, "vm");
  const removed: string[] = [];
  for (const entry of await readdir(base).catch(() => [] as string[])) {
    if (entry !== name && !entry.startsWith(`${name}@`) && !entry.startsWith(`${name}.overlay-`)) continue;
    const dir = join(base, entry);
    const text = await readFile(join(dir, "instance.json"), "utf8").catch(() => undefined);
    if (text) {
      try {
        await stopInstance(proc, dir, JSON.parse(text) as InstanceRecord);
      } catch {
        // removed below all the same
      }
    }
    await rm(dir, { recursive: true, force: true });
    removed.push(entry);
  }
  return removed;
}
