/**
 * Named crash points, for the power-cut tests only. With the environment
 * variable EOS_TEST_CRASH_AT=STEP, a command SIGKILLs itself when it reaches
 * STEP: nothing after it runs, no `finally`, no lock release, exactly what a
 * kill or a crash at that point would leave behind. Without the variable
 * this is one string comparison per step.
 *
 * CRASH_STEPS is the list the test walks (test/integration/power-cuts.test.ts):
 * a step added to a transaction goes here, and the test fails until it has a
 * row and is reached. The variable is read here and nowhere else; no context
 * is needed, so a step can be marked at any depth (the boot control block's
 * temp file, the slot writer's blocks).
 *
 * With EOS_TEST_CRASH_MODE=power as well (the vm tier, inside a guest), the
 * step resets the machine through /proc/sysrq-trigger instead: no sync, so
 * what the kernel had not yet written is lost as in a real power cut, which
 * a killed process never shows. Only on a machine that EOS booted (eos.slot=
 * on its command line): a stray variable never resets a build host.
 */
import { readFileSync, writeFileSync } from "node:fs";

/** Every step, in the order each transaction reaches it. */
export const CRASH_STEPS = [
  // os-update --apply
  "apply:checked",
  "apply:invalidate:before-rename",
  "apply:invalidated",
  "apply:slot-partly-written",
  "apply:slot-written",
  "apply:slot-verified",
  "apply:trial:before-rename",
  "apply:trial",
  // os-update --commit
  "commit:before-rename",
  "commit:written",
  // os-update --commit on a normal boot (confirms it)
  "confirm:before-rename",
  // os-update --rollback
  "rollback:verified",
  "rollback:before-rename",
  "rollback:written",
  // os-update --firmware
  "firmware:downloaded",
  "firmware:staged-partly",
  "firmware:staged",
  "firmware:switched-partly",
  "firmware:switched",
  "firmware:removed-partly",
  // flake-registry --setup (and the first boot's set-up)
  "registry:formatted",
  "registry:token",
  "registry:before-complete",
] as const;

export type CrashStep = (typeof CRASH_STEPS)[number];

export const CRASH_ENV = "EOS_TEST_CRASH_AT";
export const CRASH_MODE_ENV = "EOS_TEST_CRASH_MODE";

function bootedByEos(): boolean {
  try {
    return /(^|\s)eos\.slot=/.test(readFileSync("/proc/cmdline", "utf8"));
  } catch {
    return false;
  }
}

/** Dies here, at once and without clean-up, when the tests asked for a crash at `step`. */
export function crashPoint(step: CrashStep): void {
  if (process.env[CRASH_ENV] !== step) return;
  if (process.env[CRASH_MODE_ENV] === "power" && bootedByEos()) {
    try {
      // "b": reboot at once, without syncing or unmounting.
      writeFileSync("/proc/sysrq-trigger", "b");
    } catch {
      // Not root, or no sysrq: the kill below still stops everything after the step.
    }
  }
  process.kill(process.pid, "SIGKILL");
}
