/**
 * The boot decisions os-update takes on a running (or offline) device:
 * commit a trial slot, confirm a normal boot of the committed one, roll
 * back to the other slot after verifying it (docs/boot-control.md).
 */
import { EosError } from "../../core/errors.ts";
import {
  commitSlot,
  confirmBoot,
  otherSlot,
  readBootState,
  rollbackTo,
  SLOT_LABEL,
  type Slot,
} from "../../core/update/bootctl.ts";
import { crashPoint } from "../crash-point.ts";
import { detectFallback } from "../../core/update/fallback.ts";
import { hashSlot } from "./staged.ts";
import { readBootControl, writeBootControl } from "./boot-control.ts";
import { kernelCommandLine, openDevice, withUpdateLock, type UpdaterOptions } from "./updater.ts";

export type CommitResult =
  | { status: "not-trial" | "no-trial" | "confirmed"; defaultSlot?: Slot }
  | { status: "committed" | "already-default"; slot: Slot; version: string | undefined };

export async function commit(o: UpdaterOptions, options: { reboot: boolean }): Promise<CommitResult> {
  const onTrialBoot = o.rootDevice !== undefined || (await kernelCommandLine(o.ctx)).commitUpdate;
  return withUpdateLock(o.ctx, async () => {
    const device = await openDevice(o);
    const vars = await readBootControl(device.esp);
    const state = readBootState(vars);
    let running: Slot;
    if (device.layout.online && onTrialBoot) running = device.layout.running;
    else if (!device.layout.online && state.trial) running = state.trial;
    else {
      // A normal boot of the committed slot (or a disk with nothing on trial): confirm it.
      const slot = device.layout.online ? device.layout.running : state.defaultSlot;
      // GRUB went back on its own since the last boot: say so once (core/update/fallback.ts).
      const { vars: marked, fellBack } = detectFallback(vars, slot);
      const { vars: next, changed } = confirmBoot(marked, slot);
      if (changed || fellBack) await writeBootControl(device.esp, next, "confirm");
      if (fellBack) {
        o.say(
          `${fellBack.version ?? "the update"} did not come up (${fellBack.why}): slot ${slot} runs again`,
        );
        await o.events?.note({ type: "fell_back", version: fellBack.version, slot });
      }
      const status = changed ? "confirmed" : device.layout.online ? "not-trial" : "no-trial";
      return { status, defaultSlot: state.defaultSlot };
    }
    const { vars: next, changed } = commitSlot(vars, running);
    if (changed) await writeBootControl(device.esp, next, "commit");
    crashPoint("commit:written");
    const result: CommitResult = {
      status: changed ? "committed" : "already-default",
      slot: running,
      version: state.slots[running].version,
    };
    if (changed) await o.events?.note({ type: "committed", version: result.version ?? null, slot: running });
    if (options.reboot) await o.boot.reboot();
    return result;
  });
}

export interface RollbackResult {
  slot: Slot;
  version: string | undefined;
}

export async function rollback(o: UpdaterOptions, options: { reboot: boolean }): Promise<RollbackResult> {
  return withUpdateLock(o.ctx, async () => {
    const device = await openDevice(o);
    const vars = await readBootControl(device.esp);
    const state = readBootState(vars);
    const from = device.layout.online ? device.layout.running : state.defaultSlot;
    const target = otherSlot(from);
    const slot = device.layout.slots[target];
    const record = state.slots[target];
    if (!slot)
      throw new EosError("SLOT", `${device.layout.disk} has no ${SLOT_LABEL[target]} to roll back to`);
    // A staged slot is an update held back by the window, never booted: not something to go back to.
    if (state.staged === target)
      throw new EosError(
        "SLOT",
        `slot ${target} holds ${record.version ?? "an update"} staged for the maintenance window, never booted: nothing to roll back to`,
        { hint: "os-update --apply inside the window switches to it on trial" },
      );
    if (!record.sha256 || !record.size) {
      throw new EosError("SLOT", `slot ${target} holds no verified root (it was never completely written)`, {
        hint: "nothing to roll back to",
      });
    }
    const sha = await hashSlot(o.ctx, device.layout.disk, slot.range, record.size);
    if (sha !== record.sha256) {
      throw new EosError(
        "HASH_MISMATCH",
        `slot ${target} does not verify (sha256 ${sha}, recorded ${record.sha256}): refusing to roll back`,
      );
    }
    crashPoint("rollback:verified");
    await writeBootControl(device.esp, rollbackTo(vars, target), "rollback");
    crashPoint("rollback:written");
    await o.events?.note({ type: "rolled_back", version: record.version ?? null, slot: target });
    o.say(
      `slot ${target} (${record.version ?? "?"}) verified and made the default${options.reboot ? "; rebooting" : "; reboot to use it"}`,
    );
    if (options.reboot) await o.boot.reboot();
    return { slot: target, version: record.version };
  });
}
