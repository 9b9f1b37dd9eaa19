/**
 * Booting a VM flake's machine: the image must be there (a flake never pulls
 * at launch), the engine's command line or Firecracker configuration from
 * one plan, the console kept for error messages, and what is left to clean.
 */
import { open, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { EosError } from "../../core/errors.ts";
import type { PilotArgs } from "../../core/flakes/pilot-args.ts";
import { firecrackerConfig, guestMac, kernelFormat, tapName } from "../../core/flakes/firecracker-config.ts";
import {
  bootArgs,
  bootArgsForInstance,
  type VmEngine,
  type VmFlake,
  type VmPlan,
} from "../../core/flakes/vm.ts";
import { qemuArgv, QEMU_USER_NET } from "../../core/flakes/vm-qemu.ts";
import type { Context } from "../context.ts";
import { formatArgv, type ProcessRunner } from "../process.ts";
import { createTap, qemuAccel, removeTap, startEngine, type VmProcess } from "./vm-engine.ts";

export interface Launch {
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
export async function checkImage(launch: Launch): Promise<void> {
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

export interface VmDir {
  dir: string;
  socket: string;
  consoleLog: string;
  overlay: string | undefined;
  tap: string | undefined;
}

export function checkSocketPath(path: string): void {
  if (Buffer.byteLength(path) > 100) {
    throw new EosError("VM", `socket path ${path} is too long for a Unix socket`, {
      hint: "set firecracker_ids_dir in flakes.yml to a shorter directory",
    });
  }
}

/** Starts the VM in `dir` (its overlay already made). */
export async function bootVm(launch: Launch, vm: VmDir, detached: boolean): Promise<VmProcess> {
  const fc = launch.flake.runtime.firecracker;
  const network = launch.flake.runtime.network;
  const cmdline = bootArgs(bootArgsForInstance(launch.flake, launch.pilot.instance), {
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

export async function lostError(
  launch: Launch,
  vm: VmDir,
  detail: string,
  stderr: string,
): Promise<EosError> {
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

export function command(launch: Launch): string[] {
  return [launch.flake.targetAppPath, ...launch.pilot.appArgs];
}

export async function cleanupVmDir(proc: ProcessRunner, vm: VmDir, keep: boolean): Promise<void> {
  if (vm.tap) await removeTap(proc, vm.tap);
  if (!keep) await rm(vm.dir, { recursive: true, force: true });
}
