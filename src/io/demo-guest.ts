/**
 * What the demo (and the vm tier after it) reads from inside the guest: the
 * running version and slot, the boot control block, --check's answer, and
 * whether update_commit.service has run.
 */
import { EosError } from "../core/errors.ts";
import type { Vm } from "./machine/qemu.ts";

export interface GuestState {
  version: string;
  slot: string;
  cmdline: string;
  grubenv: Record<string, string>;
  checkExit: number;
}

export async function guestState(vm: Vm): Promise<GuestState> {
  const osRelease = await vm.sshOk(["cat", "/etc/os-release"]);
  const cmdline = (await vm.sshOk(["cat", "/proc/cmdline"])).trim();
  const grubenv: Record<string, string> = {};
  for (const line of (await vm.sshOk(["cat", "/boot/efi/EFI/BOOT/grubenv"])).split("\n")) {
    const m = /^(eos_[A-Za-z0-9_]+)=(.*)$/.exec(line);
    if (m) grubenv[m[1] as string] = m[2] as string;
  }
  const check = await vm.ssh(["os-update", "--check"], { timeoutMs: 300_000 });
  if (check.code !== 0 && check.code !== 1) {
    throw new EosError("VM", `os-update --check failed in the guest (${check.code}): ${check.stderr}`);
  }
  return {
    version: /^VERSION="?([^"\n]*)"?$/m.exec(osRelease)?.[1] ?? "?",
    slot: /eos\.slot=([AB])/.exec(cmdline)?.[1] ?? "?",
    cmdline,
    grubenv,
    checkExit: check.code,
  };
}

/** Waits until the guest has committed its trial boot (update_commit.service ran). */
export async function waitForCommit(vm: Vm, timeoutMs: number): Promise<string> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const state = (
      await vm.ssh(["systemctl", "show", "-P", "ActiveState", "update_commit.service"])
    ).stdout.trim();
    const result = (
      await vm.ssh(["systemctl", "show", "-P", "Result", "update_commit.service"])
    ).stdout.trim();
    if (state === "active" || state === "failed") return `${state} (${result})`;
    if (performance.now() > deadline)
      throw new EosError("VM", `update_commit.service still ${state} after ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 2000));
  }
}
