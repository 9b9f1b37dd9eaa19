/**
 * A VM flake's instance, from boot to removal. A plain launch boots the VM
 * (Firecracker, or QEMU with the same image), runs the command through the
 * guest init `sci`, and removes the VM and its throwaway overlay. A resume
 * flake keeps its VM (and overlay) running and sends later calls to it
 * without booting again; `%remove` and `flake-ctl firecracker remove` stop it.
 */
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { EosError } from "../../core/errors.ts";
import { parsePilotArgs, type FlakeSource, type PilotArgs } from "../../core/flakes/flake-config.ts";
import { firecrackerConfig, guestMac, kernelFormat, tapName } from "../../core/flakes/firecracker-config.ts";
import {
  bootArgs,
  instanceKey,
  parsePortOption,
  DEFAULT_VSOCK_PORT,
  VM_PILOT_OPTIONS,
  type VmEngine,
  type VmFlake,
  type VmPlan,
} from "../../core/flakes/vm.ts";
import { qemuArgv, QEMU_USER_NET } from "../../core/flakes/vm-qemu.ts";
import type { Context } from "../context.ts";
import { formatArgv, killPid, pidAlive, stopStarted, type ProcessRunner } from "../process.ts";
import { ensureOwnIdsDir, removePath, withLockFile, writeFileAtomic } from "./flake-files.ts";
import { isDebug, loadPilotFlake } from "./pilot.ts";
import { connectChannel, runSession, type Channel } from "./sci-session.ts";
import {
  chooseEngine,
  createTap,
  isOurVm,
  qemuAccel,
  removeTap,
  startEngine,
  type VmProcess,
} from "./vm-engine.ts";
import { copyOverlay, overlayTemplate } from "./vm-overlay.ts";

const LABEL = "firecracker-pilot";
/** How long a VM may take to boot to its guest init (TCG on a busy machine is slow). */
const BOOT_TIMEOUT_MS = 5 * 60_000;

async function parseFlake(sources: FlakeSource[]): Promise<VmFlake> {
  const { parseYamlMapping } = await import("../../core/flakes/flake-yaml.ts");
  const { vmFlakeFromDocuments } = await import("../../core/flakes/vm.ts");
  return vmFlakeFromDocuments(sources.map((s) => ({ file: s.file, data: parseYamlMapping(s.text, s.file) })));
}

interface Launch {
  ctx: Context;
  name: string;
  key: string;
  flake: VmFlake;
  pilot: PilotArgs;
  engine: VmEngine;
  binary: string;
  idsDir: string;
  debug: boolean;
  vsockPort: number;
  log(line: string): void;
}

async function fileHead(path: string, bytes: number): Promise<Buffer> {
  const handle = await open(path, "r").catch(() => undefined);
  if (!handle) return Buffer.alloc(0);
  try {
    const buf = Buffer.alloc(bytes);
    const { bytesRead } = await handle.read(buf, 0, bytes, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/** The image files must be there (a flake never pulls at launch). */
async function checkImage(launch: Launch): Promise<void> {
  const fc = launch.flake.runtime.firecracker;
  for (const [what, path] of [
    ["rootfs", fc.rootfsImagePath],
    ["kernel", fc.kernelImagePath],
    ["initrd", fc.initrdPath],
  ] as const) {
    if (path === undefined) continue;
    if (!(await stat(path).catch(() => undefined))?.isFile()) {
      throw new EosError(
        "NOT_FOUND",
        `${launch.name}: the ${what} of VM image ${launch.flake.name} is missing (${path})`,
        {
          hint: `pull the image again: flake-ctl firecracker pull --name ${launch.flake.name} --kis-image URL --force`,
        },
      );
    }
  }
  if (launch.engine === "firecracker") {
    const format = kernelFormat(await fileHead(fc.kernelImagePath, 0x206));
    if (format !== "elf") {
      throw new EosError(
        "VM",
        `${launch.name}: Firecracker boots an uncompressed ELF kernel (vmlinux); ${fc.kernelImagePath} is ${format === "bzimage" ? "a bzImage" : "not one"}`,
        {
          hint: "use a vmlinux kernel in the KIS image, or run the flake with QEMU: FLAKE_VM_ENGINE=qemu",
        },
      );
    }
  }
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

interface VmDir {
  dir: string;
  socket: string;
  consoleLog: string;
  overlay: string | undefined;
  tap: string | undefined;
}

function checkSocketPath(path: string): void {
  if (Buffer.byteLength(path) > 100) {
    throw new EosError("VM", `socket path ${path} is too long for a Unix socket`, {
      hint: "set firecracker_ids_dir in flakes.yml to a shorter directory",
    });
  }
}

/** Starts the VM in `dir` (its overlay already made). */
async function bootVm(launch: Launch, vm: VmDir, detached: boolean): Promise<VmProcess> {
  const fc = launch.flake.runtime.firecracker;
  const network = launch.flake.runtime.network;
  const cmdline = bootArgs(fc.bootArgs, {
    engine: launch.engine,
    overlay: vm.overlay !== undefined,
    resume: launch.flake.runtime.resume,
    debug: launch.debug,
    vsockPort: launch.vsockPort,
    net: network && launch.engine === "qemu" ? QEMU_USER_NET : undefined,
  });
  const plan: VmPlan = {
    kernel: fc.kernelImagePath,
    initrd: fc.initrdPath,
    bootArgs: cmdline,
    rootfs: fc.rootfsImagePath,
    overlay: vm.overlay,
    cacheType: fc.cacheType,
    vcpuCount: fc.vcpuCount,
    memSizeMib: fc.memSizeMib,
  };
  let argv: string[];
  if (launch.engine === "qemu") {
    const q = launch.flake.runtime.qemu;
    const accel = await qemuAccel(
      launch.ctx.proc,
      q.accel,
      launch.ctx.env,
      launch.binary,
      join(launch.idsDir, "qemu-accel"),
    );
    argv = qemuArgv({
      ...plan,
      name: launch.key,
      machine: q.machine,
      accel,
      socket: vm.socket,
      consoleLog: vm.consoleLog,
      network,
    });
  } else {
    if (network) {
      vm.tap = tapName(`${vm.dir}\0${process.pid}`);
      await createTap(launch.ctx.proc, vm.tap);
    }
    const config = firecrackerConfig({
      ...plan,
      vsockUds: vm.socket,
      tap: vm.tap ? { name: vm.tap, mac: guestMac(vm.tap) } : undefined,
    });
    const file = join(vm.dir, "firecracker.json");
    await writeFile(file, `${JSON.stringify(config, null, 2)}\n`);
    argv = [
      "--no-api",
      "--config-file",
      file,
      "--id",
      launch.key.replace(/[^A-Za-z0-9-]/g, "-").slice(0, 60),
    ];
  }
  launch.log(formatArgv([launch.binary, ...argv]));
  return startEngine(launch.ctx.proc, launch.binary, argv, {
    consoleLog: vm.consoleLog,
    detached,
    env: launch.ctx.env,
  });
}

async function consoleTail(path: string, lines = 8): Promise<string> {
  const text = await readFile(path, "utf8").catch(() => "");
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

async function lostError(launch: Launch, vm: VmDir, detail: string, stderr: string): Promise<EosError> {
  const tail = await consoleTail(vm.consoleLog);
  const engineErr = stderr.trim().split("\n").slice(-3).join(" / ");
  return new EosError(
    "VM",
    `${launch.name}: the VM ended before the command finished (${detail})` +
      (engineErr ? `\n${launch.engine}: ${engineErr}` : "") +
      (tail ? `\nlast console lines:\n${tail}` : ""),
    { hint: "run with PILOT_DEBUG=1 for the whole boot log" },
  );
}

function command(launch: Launch): string[] {
  return [launch.flake.targetAppPath, ...launch.pilot.appArgs];
}

async function cleanupVmDir(proc: ProcessRunner, vm: VmDir, keep: boolean): Promise<void> {
  if (vm.tap) await removeTap(proc, vm.tap);
  if (!keep) await rm(vm.dir, { recursive: true, force: true });
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
