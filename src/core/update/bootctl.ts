/**
 * A/B boot control over the GRUB environment block (docs/boot-control.md).
 * Pure transitions: each takes the current variables and returns new ones,
 * so the io layer only reads, calls one of these, and writes atomically.
 */
import { EosError } from "../errors.ts";
import { ROOT_CLONE_LABEL, ROOT_LABEL } from "../manifest.ts";

export type Slot = "A" | "B";
export const SLOT_LABEL: Record<Slot, string> = { A: ROOT_LABEL, B: ROOT_CLONE_LABEL };
export const DEFAULT_TRIES = 3;

export function otherSlot(slot: Slot): Slot {
  return slot === "A" ? "B" : "A";
}

export function slotOfLabel(label: string): Slot | undefined {
  if (label === ROOT_LABEL) return "A";
  if (label === ROOT_CLONE_LABEL) return "B";
  return undefined;
}

export interface SlotRecord {
  /** GRUB partition name on the boot disk, e.g. gpt2. */
  part: string | undefined;
  uuid: string | undefined;
  version: string | undefined;
  sha256: string | undefined;
  size: number | undefined;
  /** The dm-verity parameter (ROOT_HASH:BLOCKS) GRUB and kexec boot the slot with. */
  verity: string | undefined;
}

export interface BootState {
  defaultSlot: Slot;
  trial: Slot | undefined;
  tries: number;
  /** A slot verified but held back by a closed maintenance window (markStaged): never booted. */
  staged: Slot | undefined;
  slots: Record<Slot, SlotRecord>;
}

function slotVar(slot: Slot, field: string): string {
  return `eos_${slot}_${field}`;
}

export function readBootState(vars: Map<string, string>): BootState {
  const def = vars.get("eos_default");
  if (def !== "A" && def !== "B") {
    throw new EosError(
      "BOOT_CONTROL",
      `boot control block has no valid eos_default (found ${JSON.stringify(def ?? null)})`,
      {
        hint: "was this disk made by `eos build`?",
      },
    );
  }
  const trial = vars.get("eos_trial");
  const staged = vars.get("eos_staged");
  const tries = Number(vars.get("eos_tries") ?? "0");
  const record = (slot: Slot): SlotRecord => {
    const size = vars.get(slotVar(slot, "size"));
    return {
      part: vars.get(slotVar(slot, "part")) || undefined,
      uuid: vars.get(slotVar(slot, "uuid")) || undefined,
      version: vars.get(slotVar(slot, "version")) || undefined,
      sha256: vars.get(slotVar(slot, "sha256")) || undefined,
      size: size && /^[0-9]+$/.test(size) ? Number(size) : undefined,
      verity: vars.get(slotVar(slot, "verity")) || undefined,
    };
  };
  return {
    defaultSlot: def,
    trial: trial === "A" || trial === "B" ? trial : undefined,
    tries: Number.isInteger(tries) && tries >= 0 ? tries : 0,
    staged: staged === "A" || staged === "B" ? staged : undefined,
    slots: { A: record("A"), B: record("B") },
  };
}

function copy(vars: Map<string, string>): Map<string, string> {
  return new Map(vars);
}

/**
 * Before a slot is written: forget what it held and take it off trial, so
 * that a write cut short can never be booted.
 */
export function markInvalid(vars: Map<string, string>, slot: Slot): Map<string, string> {
  const state = readBootState(vars);
  if (state.defaultSlot === slot)
    throw new EosError("SLOT", `slot ${slot} is the default slot: refusing to overwrite it`);
  const next = copy(vars);
  next.set(slotVar(slot, "version"), "");
  next.set(slotVar(slot, "sha256"), "");
  next.set(slotVar(slot, "size"), "");
  next.set(slotVar(slot, "verity"), "");
  if (state.trial === slot) {
    next.set("eos_trial", "");
    next.set("eos_tries", "0");
  }
  // Being written again: whatever was pending there is no longer waiting for its boots (fallback.ts).
  if (vars.get("eos_pending") === slot) next.set("eos_pending", "");
  if (vars.get("eos_staged") === slot) next.set("eos_staged", "");
  return next;
}

/** What a verified slot holds, as its record keeps it. */
export interface SlotContent {
  version: string;
  sha256: string;
  size: number;
  verity?: string | undefined;
}

function recordContent(next: Map<string, string>, slot: Slot, content: SlotContent): void {
  next.set(slotVar(slot, "version"), content.version);
  next.set(slotVar(slot, "sha256"), content.sha256);
  next.set(slotVar(slot, "size"), String(content.size));
  next.set(slotVar(slot, "verity"), content.verity ?? "");
  if (next.get("eos_staged") === slot) next.set("eos_staged", "");
}

/**
 * The slot verified but may not be switched to yet (a closed maintenance
 * window): record what it holds without putting it on trial, so a later
 * --apply can switch to it without downloading it again. GRUB never boots
 * it: it is neither the default nor on trial.
 */
export function markStaged(vars: Map<string, string>, slot: Slot, content: SlotContent): Map<string, string> {
  const state = readBootState(vars);
  if (state.defaultSlot === slot || state.trial === slot)
    throw new EosError("SLOT", `slot ${slot} is the default or on trial: refusing to stage into it`);
  const next = copy(vars);
  recordContent(next, slot, content);
  next.set("eos_staged", slot);
  return next;
}

/**
 * Whether the slot's record says it holds exactly this content. Only a hint:
 * the caller hashes the slot again before trusting it, since its bytes may
 * have changed since the record was written.
 */
export function recordedAs(state: BootState, slot: Slot, content: SlotContent): boolean {
  const r = state.slots[slot];
  return (
    state.defaultSlot !== slot &&
    r.version === content.version &&
    r.sha256 === content.sha256 &&
    r.size === content.size &&
    (r.verity ?? "") === (content.verity ?? "")
  );
}

/** After the slot verified: record what it holds and give it `tries` boots to commit. */
export function markTrial(
  vars: Map<string, string>,
  slot: Slot,
  content: SlotContent,
  tries: number,
): Map<string, string> {
  if (tries < 1 || tries > 9) throw new EosError("USAGE", `tries must be 1..9, got ${tries}`);
  const next = copy(vars);
  recordContent(next, slot, content);
  next.set("eos_trial", slot);
  next.set("eos_tries", String(tries));
  next.set("eos_pending", slot);
  return next;
}

/** The running trial slot becomes the default. */
export function commitSlot(
  vars: Map<string, string>,
  running: Slot,
): { vars: Map<string, string>; changed: boolean } {
  const state = readBootState(vars);
  if (state.trial !== running) {
    if (state.defaultSlot === running) return { vars, changed: false };
    throw new EosError("BOOT_CONTROL", `slot ${running} is running but is neither on trial nor the default`, {
      hint: "its tries ran out; apply the update again",
    });
  }
  const next = copy(vars);
  next.set("eos_default", running);
  next.set("eos_trial", "");
  next.set("eos_tries", "0");
  next.set("eos_unconfirmed", "");
  next.set("eos_pending", "");
  next.set("eos_confirmed", running);
  return { vars: next, changed: true };
}

/**
 * The committed slot came up: GRUB stops counting its unconfirmed boots
 * (docs/boot-control.md). `changed` is false when there was nothing to clear,
 * so a normal boot does not rewrite the ESP.
 */
export function confirmBoot(
  vars: Map<string, string>,
  running: Slot,
): { vars: Map<string, string>; changed: boolean } {
  const state = readBootState(vars);
  if (state.defaultSlot !== running || !vars.get("eos_unconfirmed")) return { vars, changed: false };
  const next = copy(vars);
  next.set("eos_unconfirmed", "");
  return { vars: next, changed: true };
}

/** Make `target` the default (the caller has verified its content). */
export function rollbackTo(vars: Map<string, string>, target: Slot): Map<string, string> {
  const next = copy(vars);
  next.set("eos_default", target);
  next.set("eos_trial", "");
  next.set("eos_tries", "0");
  next.set("eos_unconfirmed", "");
  // The operator's choice, not GRUB's: no fallback to report at the next boot.
  next.set("eos_pending", "");
  next.set("eos_confirmed", target);
  return next;
}

/**
 * The kernel command line for booting `slot` via kexec: the running one with
 * root=, eos.slot=, eos.verity= and COMMIT_UPDATE replaced. Words are kept as they are.
 */
export function kexecCommandLine(
  current: string,
  partuuid: string,
  slot: Slot,
  verity?: string | undefined,
): string {
  const words = current
    .trim()
    .split(/\s+/)
    .filter(
      (w) =>
        w !== "" &&
        !w.startsWith("root=") &&
        !w.startsWith("eos.slot=") &&
        !w.startsWith("eos.verity=") &&
        w !== "COMMIT_UPDATE" &&
        !w.startsWith("BOOT_IMAGE="),
    );
  return [
    ...words,
    `root=PARTUUID=${partuuid.toLowerCase()}`,
    `eos.slot=${slot}`,
    ...(verity ? [`eos.verity=${verity}`] : []),
    "COMMIT_UPDATE",
  ].join(" ");
}

export interface KernelCommandLine {
  rootPartuuid: string | undefined;
  slot: Slot | undefined;
  commitUpdate: boolean;
}

export function parseKernelCommandLine(text: string): KernelCommandLine {
  const words = text.trim().split(/\s+/);
  const value = (key: string) => words.find((w) => w.startsWith(`${key}=`))?.slice(key.length + 1);
  const root = value("root");
  const slot = value("eos.slot");
  return {
    rootPartuuid: root?.toUpperCase().startsWith("PARTUUID=")
      ? root.slice("PARTUUID=".length).toUpperCase()
      : undefined,
    slot: slot === "A" || slot === "B" ? slot : undefined,
    commitUpdate: words.includes("COMMIT_UPDATE"),
  };
}
