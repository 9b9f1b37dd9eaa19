/**
 * Did GRUB fall back? GRUB changes the boot control block on its own in two
 * ways (docs/boot-control.md): it gives up a trial slot whose tries ran out,
 * and it makes the other slot the default after three unconfirmed boots of
 * the committed one. Neither leaves a mark that says so, and GRUB cannot
 * tell anyone; os-update can, at the next boot (`--commit` runs on every
 * boot). So os-update keeps two marks of its own that GRUB never touches:
 *   eos_pending    the slot it put on trial, cleared when that slot commits
 *                  (or is rolled away from, or rewritten);
 *   eos_confirmed  the slot it last saw come up as the default.
 * A boot of a slot other than eos_pending with nothing on trial, or of a
 * default other than eos_confirmed that os-update did not choose, is a
 * fallback: reported once, as the marks are updated in the same write.
 */
import { readBootState, type Slot } from "./bootctl.ts";

export interface Fallback {
  /** The version that did not survive its boots. */
  version: string | null;
  /** The slot running now. */
  slot: Slot;
  why: "tries-ran-out" | "unconfirmed";
}

export function detectFallback(
  vars: Map<string, string>,
  running: Slot,
): { vars: Map<string, string>; fellBack: Fallback | undefined } {
  const state = readBootState(vars);
  const pending = vars.get("eos_pending");
  const confirmed = vars.get("eos_confirmed");
  const next = new Map(vars);
  if ((pending === "A" || pending === "B") && pending !== running && state.trial !== pending) {
    next.set("eos_pending", "");
    return {
      vars: next,
      fellBack: { version: state.slots[pending].version ?? null, slot: running, why: "tries-ran-out" },
    };
  }
  if ((confirmed === "A" || confirmed === "B") && confirmed !== running && state.defaultSlot === running) {
    next.set("eos_confirmed", running);
    return {
      vars: next,
      fellBack: { version: state.slots[confirmed].version ?? null, slot: running, why: "unconfirmed" },
    };
  }
  return { vars, fellBack: undefined };
}
