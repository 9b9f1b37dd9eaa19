/**
 * What this host offers a machine: QEMU and its UEFI firmware, KVM when it
 * really works (TCG otherwise), and a free port for the guest's SSH.
 */
import { createServer } from "node:net";
import type { Accel } from "../../core/machine/qemu-machine.ts";
import { kvmWorks, systemRunner, type ProcessRunner } from "../process.ts";

export const OVMF_CODE = "/usr/share/OVMF/OVMF_CODE.fd";
export const OVMF_VARS = "/usr/share/OVMF/OVMF_VARS.fd";
export const QEMU = "qemu-system-x86_64";

let accelCache: Accel | undefined;

/**
 * KVM only when QEMU can actually start a vCPU with it: /dev/kvm may exist
 * and still fail (`-cpu host`: "failed to set MSR"). EOS_QEMU_ACCEL=kvm|tcg
 * overrides the probe.
 */
export async function detectAccel(
  env: NodeJS.ProcessEnv = process.env,
  proc: ProcessRunner = systemRunner(),
): Promise<Accel> {
  const forced = env.EOS_QEMU_ACCEL;
  if (forced === "kvm" || forced === "tcg") return forced;
  if (accelCache) return accelCache;
  accelCache = (await kvmWorks(proc, QEMU, 4000)) ? "kvm" : "tcg";
  return accelCache;
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
