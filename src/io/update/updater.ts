/**
 * How an update happens on a device: check, apply, commit, rollback and
 * firmware as plain functions that return what they did. Every step that
 * changes the disk follows one rule: the boot configuration only ever points
 * at a slot whose bytes were verified against the signed manifest, so a
 * failure at any point leaves the running system and its boot state as they
 * were (a slot being written is marked invalid first).
 */
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import {
  DEFAULT_TRIES,
  kexecCommandLine,
  markInvalid,
  markTrial,
  otherSlot,
  parseKernelCommandLine,
  readBootState,
  SLOT_LABEL,
  type KernelCommandLine,
  type Slot,
} from "../../core/update/bootctl.ts";
import { EosError } from "../../core/errors.ts";
import type { DeviceConfig } from "../../core/config.ts";
import type { Manifest } from "../../core/manifest.ts";
import type { ByteRange } from "../../core/gpt.ts";
import { verityParameter } from "../../core/verity.ts";
import { checkMadeFor, judgeOffer } from "../../core/update/acceptance.ts";
import { sysPath, type Context } from "../context.ts";
import { crashPoint } from "../crash-point.ts";
import { acquireLock } from "../lock.ts";
import { findKernel, withSlotMounted, type BootActions } from "./boot-actions.ts";
import { readBootControl, writeBootControl } from "./boot-control.ts";
import {
  fetchOffer,
  fetchVerifiedManifest,
  loadSetupWith,
  type SshTransport,
  openUpdateSource,
  type DeviceSetup,
} from "./device-config.ts";
import { deviceIdentity } from "./device-identity.ts";
import { updateFirmware, type FirmwareResult } from "./firmware.ts";
import { type WriteSlotResult } from "./slot-writer.ts";
import { planUpdate, writeRootByPlan, type RootWrite, type UpdatePlan } from "./root-write.ts";
import { recordStaged, reuseStaged, type StagedTarget } from "./staged.ts";
import { limitsFrom, type TransferLimits } from "../watchdog.ts";
import { locateSlots, type SlotLayout } from "./slots.ts";
import { runningRootHash } from "./running-root.ts";
import type { UpdateSource } from "./source.ts";
import { downloadStarted, type UpdateEvents } from "./reporter.ts";
import { judgeAssignment } from "./assignment.ts";
import { progressReports } from "./progress-report.ts";
import { outsideWindow, windowState, type WindowState } from "./window.ts";
import { inWindow } from "../../core/fleet/window.ts";

const DEFAULT_ESP = "/boot/efi";

export interface UpdaterOptions {
  ctx: Context;
  /** /etc/os-update.yml unless given. */
  config?: string | undefined;
  /** Act on this disk instead of the running system (no kexec; the trial starts at its next boot). */
  rootDevice?: string | undefined;
  /** Where the ESP is mounted (default /boot/efi). */
  esp?: string | undefined;
  allowDowngrade?: boolean | undefined;
  /** Take the full stream even when a delta is offered. */
  noDelta?: boolean | undefined;
  boot: BootActions;
  /** First retry delay of an interrupted download (doubles each time). */
  retryDelayMs?: number | undefined;
  /** Lines that tell a person what is happening (the CLI prints them unless --json). */
  say(line: string): void;
  /**
   * The original's `--read NAME --server U@H --pkey K` next to --check,
   * --apply or --firmware: the SSH transport and image name for this call,
   * over os-update.yml's (which then need not exist).
   */
  transport?: SshTransport | undefined;
  events?: UpdateEvents | undefined; // reports to the update server (see reporter.ts); none when absent
  /** At most how often a download reports its progress (default PROGRESS_REPORT_MS). */
  progressReportMs?: number | undefined;
}

/** The bounds on a download from os-update.yml (deadline, stall), with their defaults. */
export function transferLimits(config: DeviceConfig): TransferLimits {
  return limitsFrom(config.update);
}

export interface Device {
  layout: SlotLayout;
  esp: string;
  cmdline: KernelCommandLine;
}

export async function kernelCommandLine(ctx: Context): Promise<KernelCommandLine> {
  return parseKernelCommandLine(await readFile(sysPath(ctx, "/proc/cmdline"), "utf8").catch(() => ""));
}

export async function openDevice(o: UpdaterOptions): Promise<Device> {
  if (o.rootDevice !== undefined && o.esp === undefined) {
    throw new EosError("USAGE", "--root-device needs --esp PATH (where that disk's ESP is mounted)");
  }
  const esp = o.esp ?? sysPath(o.ctx, DEFAULT_ESP);
  const cmdline = await kernelCommandLine(o.ctx);
  const layout = await locateSlots(o.ctx, {
    rootDevice: o.rootDevice,
    cmdline,
    bootDefault: async () => readBootState(await readBootControl(esp)).defaultSlot,
  });
  return { layout, esp, cmdline };
}

export interface CheckResult {
  setup: DeviceSetup & { source: UpdateSource };
  manifest: Manifest;
  device: Device;
  runningSha: string;
  runningVersion: string | undefined;
  upToDate: boolean;
  /** The server's version is not newer than the running one (older, or the same with other bytes). */
  downgrade: boolean;
  /** An update this device would install (not up to date; a downgrade only when allowed). */
  available: boolean;
  /** How it would be downloaded, when available (not exact: planUpdate); --apply plans exactly as it writes. */
  plan: UpdatePlan | undefined;
  /** Why the server's assignment did not allow the downgrade, when it is one. */
  refusal?: string;
  /** When this device may switch to a new root, as its server says; absent: any time. */
  window?: WindowState;
}

/** `planning: "none"` leaves the plan to the caller (--apply plans exactly, and only when it writes). */
export async function check(
  o: UpdaterOptions,
  planning: "estimate" | "none" = "estimate",
): Promise<CheckResult> {
  const setup = await loadSetupWith(o.ctx, o.config, o.transport);
  const source = await openUpdateSource(o.ctx, setup);
  const { manifest, window } = await fetchOffer(o.ctx, setup, source);
  const device = await openDevice(o);
  const vars = await readBootControl(device.esp).catch(() => undefined);
  const state = vars ? readBootState(vars) : undefined;
  const identity = await deviceIdentity(o.ctx, {
    online: device.layout.online,
    bootVars: vars,
    configuredName: setup.config.update.name,
  });
  const runningSha = await runningRootHash(o.ctx, device, manifest.partitions.root.size);
  const runningVersion = state?.slots[device.layout.running].version;
  // Before anything else: a manifest for another image or architecture is refused, whatever it offers.
  const offer = judgeOffer(manifest, identity, { version: runningVersion, sha256: runningSha });
  const upToDate = offer.kind === "up-to-date";
  const downgrade = offer.kind === "not-newer";
  // An older version is installed on the operator's word on this device, or the server's signed one.
  const verdict =
    downgrade && !o.allowDowngrade
      ? await judgeAssignment(o.ctx, setup.config, source, manifest, runningSha)
      : undefined;
  const assigned = verdict !== undefined && "allowed" in verdict;
  const available = offer.kind === "update" || (downgrade && (Boolean(o.allowDowngrade) || assigned));
  const plan =
    available && planning === "estimate"
      ? await planUpdate({
          ctx: o.ctx,
          source,
          manifest,
          runningSha,
          layout: device.layout,
          exact: false,
          noDelta: o.noDelta,
        })
      : undefined;
  return {
    setup: { ...setup, source },
    manifest,
    device,
    runningSha,
    runningVersion,
    upToDate,
    downgrade,
    available,
    plan,
    ...(verdict && "refused" in verdict ? { refusal: verdict.refused } : {}),
    ...(window ? { window: windowState(window, o.ctx.now()) } : {}),
  };
}

/** One os-update at a time: a second run fails at once instead of queueing. */
export async function withUpdateLock<T>(ctx: Context, fn: () => Promise<T>): Promise<T> {
  const dir = sysPath(ctx, "/run");
  await mkdir(dir, { recursive: true });
  const lock = await acquireLock(join(dir, "os-update.lock"), "another os-update");
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}

export type ApplyResult =
  | { status: "up-to-date"; version: string }
  | {
      status: "trial" | "rebooting" | "kexec";
      version: string;
      slot: Slot;
      tries: number;
      timing: WriteSlotResult;
      size: number;
      sha256: string;
      /** How the slot was written, and the bytes downloaded for it. */
      path: RootWrite["path"];
      downloaded: number;
      cmdline?: string;
    };

/** Invalidates the target slot, then downloads, writes and verifies the new root into it. */
async function writeTarget(
  o: UpdaterOptions,
  r: CheckResult,
  target: Slot,
  range: ByteRange,
): Promise<RootWrite> {
  const { manifest, device, setup } = r;
  // Invalidate the target first: a write cut short must never be bootable.
  await writeBootControl(
    device.esp,
    markInvalid(await readBootControl(device.esp), target),
    "apply:invalidate",
  );
  crashPoint("apply:invalidated");
  o.say(
    `writing ${manifest.version} into slot ${target} (${SLOT_LABEL[target]}) from ${setup.source.describe}`,
  );
  const inputs = {
    ctx: o.ctx,
    source: setup.source,
    manifest,
    runningSha: r.runningSha,
    layout: device.layout,
  };
  // Exact: what a cut-short apply left in the target slot is not fetched again.
  const plan = await planUpdate({ ...inputs, exact: true, noDelta: o.noDelta });
  await o.events?.note(downloadStarted(manifest, plan));
  const reports = progressReports(o.events, manifest.version, {
    everyMs: o.progressReportMs,
    now: () => o.ctx.now(),
  });
  return writeRootByPlan({
    ...inputs,
    say: o.say,
    plan,
    target: range,
    label: target,
    limits: transferLimits(setup.config),
    retryDelayMs: o.retryDelayMs,
    track: reports.track,
  }).finally(() => reports.settle());
}

export async function apply(o: UpdaterOptions, options: { reboot: boolean }): Promise<ApplyResult> {
  return withUpdateLock(o.ctx, async () => {
    const r = await check(o, "none");
    const { manifest, device, setup } = r;
    if (r.upToDate) return { status: "up-to-date", version: manifest.version };
    if (r.downgrade && !r.available) {
      throw new EosError(
        "DOWNGRADE",
        `the server offers ${manifest.version}, not newer than the running ${r.runningVersion}` +
          (r.refusal ? ` (${r.refusal})` : ""),
        { hint: "pass --allow-downgrade to install it anyway" },
      );
    }
    const target = otherSlot(device.layout.running);
    const slot = device.layout.slots[target];
    if (!slot)
      throw new EosError(
        "SLOT",
        `${device.layout.disk} has no ${SLOT_LABEL[target]}: this image has a single root slot`,
      );
    const root = manifest.partitions.root;
    if (root.size > slot.range.length) {
      throw new EosError(
        "SLOT",
        `the new root (${root.size} bytes) does not fit slot ${target} (${slot.range.length} bytes)`,
      );
    }
    crashPoint("apply:checked");
    const verity = root.verity ? verityParameter(root.verity) : undefined;
    const record = { version: manifest.version, sha256: root.sha256, size: root.size, verity };
    const staging: StagedTarget = {
      esp: device.esp,
      disk: device.layout.disk,
      slot: target,
      range: slot.range,
      content: record,
      say: o.say,
    };
    // Staged by an --apply outside the window: switch to it without downloading it again.
    const written = (await reuseStaged(o.ctx, staging)) ?? (await writeTarget(o, r, target, slot.range));
    const { timing } = written;
    crashPoint("apply:slot-verified");
    if (r.window && !inWindow(r.window.parsed, o.ctx.now())) {
      if (written.path !== "staged") await recordStaged(staging);
      throw outsideWindow(r.window, manifest, target);
    }
    const tries = setup.config.update.tries ?? DEFAULT_TRIES;
    await writeBootControl(
      device.esp,
      markTrial(await readBootControl(device.esp), target, record, tries),
      "apply:trial",
    );
    crashPoint("apply:trial");
    await o.events?.note({ type: "written", version: manifest.version, slot: target, sha256: root.sha256 });
    const done = {
      version: manifest.version,
      slot: target,
      tries,
      timing,
      size: root.size,
      sha256: root.sha256,
      path: written.path,
      downloaded: written.downloaded,
    };
    const mib = root.size / 2 ** 20;
    if (written.path !== "staged")
      o.say(
        `wrote ${mib.toFixed(1)} MiB in ${timing.writeSeconds.toFixed(2)} s (${(mib / timing.writeSeconds).toFixed(0)} MiB/s) from ${written.downloaded} bytes downloaded (${written.path}), verified in ${timing.verifySeconds.toFixed(2)} s`,
      );
    o.say(
      `slot ${target} verified (sha256 ${root.sha256.slice(0, 16)}…) and marked for ${tries} trial boots`,
    );
    if (!device.layout.online) {
      o.say(`${device.layout.disk} boots ${manifest.version} on trial at its next start`);
      return { status: "trial", ...done };
    }
    await o.events?.note({ type: "kexec", version: manifest.version, slot: target });
    if (options.reboot) {
      o.say("rebooting into the trial slot");
      await o.boot.reboot();
      return { status: "rebooting", ...done };
    }
    const current = await readFile(sysPath(o.ctx, "/proc/cmdline"), "utf8");
    const cmdline = kexecCommandLine(current, slot.partition.uniqueGuid, target, verity);
    await withSlotMounted(
      o.ctx.proc,
      device.layout.disk,
      slot.range,
      sysPath(o.ctx, "/run/os-update"),
      async (dir) => {
        const { kernel, initrd } = await findKernel(dir);
        await o.boot.kexecLoad(kernel, initrd, cmdline);
      },
    );
    o.say(`kexec into slot ${target}: ${cmdline}`);
    await o.boot.kexecExec();
    return { status: "kexec", ...done, cmdline };
  });
}

export async function firmware(o: UpdaterOptions): Promise<FirmwareResult & { version: string }> {
  return withUpdateLock(o.ctx, async () => {
    const setup = await loadSetupWith(o.ctx, o.config, o.transport);
    const source = await openUpdateSource(o.ctx, setup);
    const manifest = await fetchVerifiedManifest(o.ctx, setup, source);
    const part = manifest.partitions.firmware;
    if (!part)
      throw new EosError("MANIFEST", `${manifest.name} ${manifest.version} has no firmware partition`);
    const esp = o.esp ?? sysPath(o.ctx, DEFAULT_ESP);
    // The ESP must be the mounted one, with its boot control block; the firmware must be for this device.
    const vars = await readBootControl(esp);
    const online = o.rootDevice === undefined;
    checkMadeFor(
      manifest,
      await deviceIdentity(o.ctx, { online, bootVars: vars, configuredName: setup.config.update.name }),
    );
    const result = await updateFirmware({
      source,
      firmware: part,
      esp,
      workDir: sysPath(o.ctx, "/run/os-update"),
      proc: o.ctx.proc,
      limits: transferLimits(setup.config),
      signal: o.ctx.signal,
    });
    return { version: manifest.version, ...result };
  });
}
