/**
 * The VM engines of VM flakes: which one runs (Firecracker where installed,
 * else QEMU with the same image), KVM or TCG for QEMU, starting the engine,
 * and Firecracker's tap devices. Every process goes through the runner.
 */
import { existsSync, readFileSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { EosError } from "../../core/errors.ts";
import type { VmEngine } from "../../core/flakes/vm.ts";
import { kvmWorks, pidAlive, type ProcessRunner, type Started } from "../process.ts";
import { findInPath } from "../files.ts";

export const QEMU_BINARY = "qemu-system-x86_64";
export const FIRECRACKER_BINARY = "firecracker";

export function binaryFor(engine: VmEngine, env: NodeJS.ProcessEnv): string {
  if (engine === "qemu") return env.EOS_QEMU_BINARY || QEMU_BINARY;
  return env.EOS_FIRECRACKER_BINARY || FIRECRACKER_BINARY;
}

/**
 * The engine for a flake: `firecracker` or `qemu` as configured (FLAKE_VM_ENGINE
 * overrides), or for `auto` Firecracker where it is installed, QEMU otherwise.
 * An engine that is not installed is a VM error naming it.
 */
export function chooseEngine(
  configured: VmEngine | "auto",
  env: NodeJS.ProcessEnv,
): { engine: VmEngine; binary: string } {
  const forced = env.FLAKE_VM_ENGINE;
  let wanted: VmEngine | "auto" = configured;
  if (forced === "qemu" || forced === "firecracker" || forced === "auto") wanted = forced;
  else if (forced) throw new EosError("USAGE", `FLAKE_VM_ENGINE=${forced}: use firecracker, qemu or auto`);
  const candidates: VmEngine[] = wanted === "auto" ? ["firecracker", "qemu"] : [wanted];
  for (const engine of candidates) {
    const binary = findInPath(binaryFor(engine, env), env);
    if (binary) return { engine, binary };
  }
  if (wanted === "auto") {
    throw new EosError(
      "VM",
      `no VM engine is installed: neither ${binaryFor("firecracker", env)} nor ${binaryFor("qemu", env)} is in PATH`,
      {
        hint: "install firecracker, or QEMU (Debian: apt-get install qemu-system-x86)",
      },
    );
  }
  throw new EosError(
    "VM",
    `the VM engine ${wanted} is not installed (${binaryFor(wanted, env)} is not in PATH)`,
    {
      hint:
        wanted === "qemu"
          ? "install QEMU (Debian: apt-get install qemu-system-x86), or set vm.runtime.engine"
          : "install Firecracker, or run the flake with QEMU: FLAKE_VM_ENGINE=qemu or vm.runtime.engine: qemu",
    },
  );
}

function bootId(): string {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return "unknown";
  }
}

/**
 * KVM or TCG for QEMU. KVM only if QEMU can really start a vCPU with it
 * (/dev/kvm may exist and still fail); probed once per host boot, the
 * answer kept in `cacheFile`. EOS_QEMU_ACCEL=kvm|tcg overrides.
 */
export async function qemuAccel(
  proc: ProcessRunner,
  preference: "auto" | "kvm" | "tcg",
  env: NodeJS.ProcessEnv,
  binary: string,
  cacheFile: string,
): Promise<"kvm" | "tcg"> {
  const forced = env.EOS_QEMU_ACCEL;
  if (forced === "kvm" || forced === "tcg") return forced;
  if (preference !== "auto") return preference;
  if (!existsSync("/dev/kvm")) return "tcg";
  const boot = bootId();
  const cached = await readFile(cacheFile, "utf8").catch(() => "");
  const [cachedBoot, cachedAccel] = cached.trim().split(" ");
  if (cachedBoot === boot && (cachedAccel === "kvm" || cachedAccel === "tcg")) return cachedAccel;
  const accel = (await kvmWorks(proc, binary, 3000)) ? "kvm" : "tcg";
  await writeFile(cacheFile, `${boot} ${accel}\n`).catch(() => undefined);
  return accel;
}

// ---------------------------------------------------------------- processes

export type VmProcess = Started;

/**
 * Starts the engine. Its stdout (Firecracker's serial console) goes to
 * `consoleLog`; stderr is kept for error messages. `detached`: the VM
 * outlives the pilot (resume).
 */
export function startEngine(
  proc: ProcessRunner,
  binary: string,
  argv: string[],
  opts: { consoleLog: string; detached: boolean; env: NodeJS.ProcessEnv },
): VmProcess {
  // Always its own process group: a Ctrl-C at the terminal reaches the app
  // through the pilot (as a signal frame), not QEMU. Only a resume VM is let go.
  return proc.start([binary, ...argv], {
    logFile: opts.consoleLog,
    stderrToLog: opts.detached,
    detached: true,
    unref: opts.detached,
    env: opts.env,
  });
}

/** Is `pid` still the VM we started (its command line names `marker`)? */
export function isOurVm(pid: number, marker: string): boolean {
  if (!pidAlive(pid)) return false;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(marker);
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------- tap devices

async function ip(proc: ProcessRunner, args: string[]): Promise<{ code: number; stderr: string }> {
  try {
    return await proc.run(["ip", ...args], { check: false, capture: false });
  } catch (error) {
    return { code: -1, stderr: (error as Error).message };
  }
}

/** Creates a tap device for Firecracker; removes it again if bringing it up fails. */
export async function createTap(proc: ProcessRunner, name: string): Promise<void> {
  if (!/^[a-z0-9]{1,15}$/.test(name)) throw new EosError("INTERNAL", `bad tap name ${name}`);
  const add = await ip(proc, ["tuntap", "add", "dev", name, "mode", "tap"]);
  if (add.code !== 0)
    throw new EosError("VM", `cannot create tap device ${name}: ${add.stderr.trim()}`, {
      hint: "needs root (CAP_NET_ADMIN) and iproute2",
    });
  const up = await ip(proc, ["link", "set", "dev", name, "up"]);
  if (up.code !== 0) {
    await removeTap(proc, name);
    throw new EosError("VM", `cannot bring tap device ${name} up: ${up.stderr.trim()}`);
  }
}

export async function removeTap(proc: ProcessRunner, name: string): Promise<void> {
  if (!/^[a-z0-9]{1,15}$/.test(name)) return;
  await ip(proc, ["link", "del", "dev", name]);
}

export function tapExists(name: string): boolean {
  return existsSync(`/sys/class/net/${name}`);
}
