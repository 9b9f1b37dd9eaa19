/**
 * What this host offers a machine: QEMU and its UEFI firmware, KVM when it
 * really works (TCG otherwise), and a free port for the guest's SSH.
 */
import { createServer } from "node:net";
import { hostArchitecture, type Architecture } from "../../core/image/arch.ts";
import type { Accel } from "../../core/machine/qemu-machine.ts";
import { kvmWorks, systemRunner, type ProcessRunner } from "../process.ts";

export const OVMF_CODE = "/usr/share/OVMF/OVMF_CODE.fd";
export const OVMF_VARS = "/usr/share/OVMF/OVMF_VARS.fd";
export const QEMU = "qemu-system-x86_64";

export interface MachineHost {
  qemu: string;
  firmwareCode: string;
  /** Template of the firmware's variable store; each machine gets its own copy. */
  firmwareVars: string;
  /** Debian packages that provide them. */
  packages: string;
}

export const MACHINE_HOSTS: Record<Architecture, MachineHost> = {
  x86_64: { qemu: QEMU, firmwareCode: OVMF_CODE, firmwareVars: OVMF_VARS, packages: "qemu-system-x86 ovmf" },
  aarch64: {
    qemu: "qemu-system-aarch64",
    firmwareCode: "/usr/share/AAVMF/AAVMF_CODE.fd",
    firmwareVars: "/usr/share/AAVMF/AAVMF_VARS.fd",
    packages: "qemu-system-arm qemu-efi-aarch64",
  },
};

const accelCache = new Map<Architecture, Accel>();

/**
 * KVM only when QEMU can actually start a vCPU with it: /dev/kvm may exist
 * and still fail (`-cpu host`: "failed to set MSR"). EOS_QEMU_ACCEL=kvm|tcg
 * overrides the probe.
 */
export async function detectAccel(
  env: NodeJS.ProcessEnv = process.env,
  proc: ProcessRunner = systemRunner(),
  architecture: Architecture = "x86_64",
): Promise<Accel> {
  const forced = env.EOS_QEMU_ACCEL;
  if (forced === "kvm" || forced === "tcg") return forced;
  // KVM runs only the host's own architecture; anything else is emulated.
  if (hostArchitecture(process.arch) !== architecture) return "tcg";
  const cached = accelCache.get(architecture);
  if (cached) return cached;
  const accel = (await kvmWorks(proc, MACHINE_HOSTS[architecture].qemu, 4000)) ? "kvm" : "tcg";
  accelCache.set(architecture, accel);
  return accel;
}

/** A free TCP port on 127.0.0.1 (bound and released; good enough for tests). */
export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const server = createServer();
    server.once("error", rej);
    server.listen(0, "127.0.0.1", () => {
      const addr = server.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      server.close(() => res(port));
    });
  });
}
