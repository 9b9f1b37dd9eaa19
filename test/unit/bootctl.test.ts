import { test } from "node:test";
import assert from "node:assert/strict";
import {
  commitSlot,
  confirmBoot,
  DEFAULT_TRIES,
  kexecCommandLine,
  markInvalid,
  markStaged,
  markTrial,
  recordedAs,
  otherSlot,
  parseKernelCommandLine,
  readBootState,
  rollbackTo,
  SLOT_LABEL,
  slotOfLabel,
  type Slot,
} from "../../src/core/update/bootctl.ts";
import { decodeGrubenv, encodeGrubenv, GRUBENV_SIZE } from "../../src/core/update/grubenv.ts";
import {
  generateGrubCfg,
  initialGrubenv,
  MAX_TRIES,
  UNCONFIRMED_LIMIT,
} from "../../src/core/image/grubcfg.ts";
import { EosError } from "../../src/core/errors.ts";
import { detectFallback } from "../../src/core/update/fallback.ts";

const A_UUID = "0F1E2D3C-4B5A-4978-8695-A4B3C2D1E0F9";
const B_UUID = "1F1E2D3C-4B5A-4978-8695-A4B3C2D1E0F9";
const A_SHA = "aa".repeat(32);
const B_SHA = "bb".repeat(32);
const NEW = { version: "1.3.0", sha256: B_SHA, size: 314572800 };

/** The block `eos build` ships: slot A committed and recorded, B empty (src/core/grubcfg.ts). */
function shipped(): Map<string, string> {
  return decodeGrubenv(
    initialGrubenv({
      aPart: "gpt2",
      aUuid: A_UUID,
      bPart: "gpt3",
      bUuid: B_UUID,
      cmdline: "console=ttyS0 rootfstype=squashfs",
      aRecord: { version: "1.2.0", sha256: A_SHA, size: 209715200 },
    }),
  );
}

function vars(entries: Record<string, string>): Map<string, string> {
  return new Map(Object.entries(entries));
}

/** Every write of the block goes through encodeGrubenv: a transition's result must survive it unchanged. */
function persisted(next: Map<string, string>): Map<string, string> {
  const block = encodeGrubenv(next);
  assert.equal(block.length, GRUBENV_SIZE);
  const back = decodeGrubenv(block);
  assert.deepEqual(back, next);
  return back;
}

const isCode = (code: string, message?: RegExp) => (error: unknown) => {
  assert.ok(error instanceof EosError, String(error));
  assert.equal(error.code, code);
  if (message) assert.match(error.message, message);
  return true;
};

// ---------------------------------------------------------------------------------------------
// A model of one pass through the generated grub.cfg (docs/boot-control.md, "GRUB logic"). There
// is no pure function for GRUB's decision in src, so this follows the cfg line by line; the
// decrement table is read out of generateGrubCfg() itself, so an off-by-one there shows here.
// Only what save_env writes persists; GRUB's `set` without save_env is gone at the next boot.
// ---------------------------------------------------------------------------------------------

function tableOfCfg(name: string): Map<string, string> {
  const table = new Map<string, string>();
  const re = new RegExp(`\\[ "\\$\\{${name}\\}" = "(\\d+)" \\]; then\\n\\s+set ${name}=(\\d+)\\n`, "g");
  for (const m of generateGrubCfg().matchAll(re)) table.set(m[1] as string, m[2] as string);
  return table;
}

const DECREMENT = tableOfCfg("eos_tries");
/** Boots of the committed slot that were not confirmed: "" → 1 → 2 → … → UNCONFIRMED_LIMIT. */
const UNCONFIRMED = tableOfCfg("eos_unconfirmed");

interface GrubBoot {
  env: Map<string, string>;
  slot: Slot;
  /** The kernel command line GRUB passes (menu entry 0). */
  cmdline: string;
}

function grubBoot(saved: Map<string, string>): GrubBoot {
  const env = new Map(saved);
  const v = (name: string) => env.get(name) ?? "";
  let def = v("eos_default");
  if (def !== "B" || v("eos_B_part") === "") def = "A";
  let boot = def;
  let commit = "";
  let tries = v("eos_tries");
  if (v("eos_trial") !== "") {
    const trial = v("eos_trial");
    if (trial !== "A" && trial !== "B") tries = "0";
    else if (trial === "B" && v("eos_B_part") === "") tries = "0";
    if (tries === "0" || tries === "") {
      env.set("eos_trial", "");
      env.set("eos_tries", "0");
    } else {
      const next = DECREMENT.get(tries) ?? "invalid";
      if (next === "invalid") {
        env.set("eos_trial", "");
        env.set("eos_tries", "0");
      } else {
        env.set("eos_tries", next);
        boot = trial;
        commit = "COMMIT_UPDATE";
      }
    }
  }
  if (commit === "") {
    const unconfirmed = v("eos_unconfirmed");
    if (unconfirmed === String(UNCONFIRMED_LIMIT)) {
      const other = def === "A" ? "B" : "A";
      const verified = v(`eos_${other}_part`) !== "" && v(`eos_${other}_sha256`) !== "";
      if (verified) {
        boot = other;
        env.set("eos_default", other);
        env.set("eos_unconfirmed", "1");
      }
    } else env.set("eos_unconfirmed", UNCONFIRMED.get(unconfirmed) ?? "1");
  }
  const uuid = v(`eos_${boot}_uuid`);
  const verity = v(`eos_${boot}_verity`) ? `eos.verity=${v(`eos_${boot}_verity`)} ` : "";
  const cmdline = `root=PARTUUID=${uuid} eos.slot=${boot} panic=10 ${verity}${v("eos_cmdline")} ${commit}`;
  return { env, slot: boot as Slot, cmdline };
}

/** A boot of the committed slot that came up: update_commit.service runs os-update --commit. */
function cameUp(boot: GrubBoot): Map<string, string> {
  return persisted(confirmBoot(boot.env, boot.slot).vars);
}

test("the GRUB model reads a full 9..1 decrement table out of grub.cfg", () => {
  assert.equal(DECREMENT.size, MAX_TRIES);
  for (let n = 1; n <= MAX_TRIES; n++) assert.equal(DECREMENT.get(String(n)), String(n - 1));
  assert.equal(UNCONFIRMED.size, UNCONFIRMED_LIMIT - 1);
  for (let n = 1; n < UNCONFIRMED_LIMIT; n++) assert.equal(UNCONFIRMED.get(String(n)), String(n + 1));
});

// --------------------------------------------------------------------------------------------- slots

test("slots: A is p.lxreadonly, B is p.lxrootclone1, each the other's other", () => {
  assert.deepEqual(SLOT_LABEL, { A: "p.lxreadonly", B: "p.lxrootclone1" });
  assert.equal(otherSlot("A"), "B");
  assert.equal(otherSlot("B"), "A");
  assert.equal(slotOfLabel("p.lxreadonly"), "A");
  assert.equal(slotOfLabel("p.lxrootclone1"), "B");
  assert.equal(slotOfLabel("p.UEFI"), undefined);
  assert.equal(slotOfLabel("p.spare"), undefined);
  assert.equal(DEFAULT_TRIES, 3);
});

// --------------------------------------------------------------------------------------------- readBootState

test("readBootState: the shipped block is A committed, nothing on trial, B holding nothing", () => {
  assert.deepEqual(readBootState(shipped()), {
    defaultSlot: "A",
    trial: undefined,
    tries: 0,
    staged: undefined,
    slots: {
      A: {
        part: "gpt2",
        uuid: A_UUID.toLowerCase(),
        version: "1.2.0",
        sha256: A_SHA,
        size: 209715200,
        verity: undefined,
      },
      B: {
        part: "gpt3",
        uuid: B_UUID.toLowerCase(),
        version: undefined,
        sha256: undefined,
        size: undefined,
        verity: undefined,
      },
    },
  });
});

test("readBootState: a missing or invalid eos_default is a BOOT_CONTROL error that shows what it found", () => {
  const base = Object.fromEntries(shipped());
  const { eos_default: _drop, ...without } = base;
  assert.throws(() => readBootState(vars(without)), isCode("BOOT_CONTROL", /eos_default \(found null\)/));
  for (const bad of ["", "C", "a", "b", "AB", " A"]) {
    assert.throws(
      () => readBootState(vars({ ...base, eos_default: bad })),
      (error: unknown) =>
        isCode("BOOT_CONTROL")(error) &&
        (error as Error).message.includes(`eos_default (found ${JSON.stringify(bad)})`),
      bad,
    );
  }
  assert.throws(() => readBootState(new Map()), isCode("BOOT_CONTROL", /eos_default/));
  assert.equal(readBootState(vars({ eos_default: "B" })).defaultSlot, "B");
});

test("readBootState: a trial that is not A or B means no trial", () => {
  const base = Object.fromEntries(shipped());
  for (const trial of ["", "C", "a", "b", "A ", "AB"]) {
    assert.equal(readBootState(vars({ ...base, eos_trial: trial, eos_tries: "2" })).trial, undefined, trial);
  }
  assert.equal(readBootState(vars({ ...base, eos_trial: "B", eos_tries: "2" })).trial, "B");
  assert.equal(readBootState(vars({ ...base, eos_trial: "A", eos_tries: "2" })).trial, "A");
  const { eos_trial: _t, ...noTrial } = base;
  assert.equal(readBootState(vars(noTrial)).trial, undefined);
});

test("readBootState: tries that are missing, empty or not a whole number >= 0 read as 0", () => {
  const base = Object.fromEntries(shipped());
  for (const tries of ["", "x", "-1", "1.5", "NaN", "Infinity", "invalid"]) {
    assert.equal(readBootState(vars({ ...base, eos_trial: "B", eos_tries: tries })).tries, 0, tries);
  }
  const { eos_tries: _t, ...noTries } = base;
  assert.equal(readBootState(vars({ ...noTries, eos_trial: "B" })).tries, 0);
  for (let n = 0; n <= MAX_TRIES; n++) {
    assert.equal(readBootState(vars({ ...base, eos_trial: "B", eos_tries: String(n) })).tries, n);
  }
});

test("readBootState: empty record fields are undefined, a size is a whole number of bytes", () => {
  const base = Object.fromEntries(shipped());
  const state = readBootState(
    vars({ ...base, eos_B_part: "", eos_B_uuid: "", eos_B_version: "", eos_B_sha256: "", eos_B_size: "" }),
  );
  assert.deepEqual(state.slots.B, {
    part: undefined,
    uuid: undefined,
    version: undefined,
    sha256: undefined,
    size: undefined,
    verity: undefined,
  });
  const {
    eos_B_part: _p,
    eos_B_uuid: _u,
    eos_B_version: _v,
    eos_B_sha256: _s,
    eos_B_size: _z,
    ...noB
  } = base;
  assert.deepEqual(readBootState(vars(noB)).slots.B, state.slots.B);
  assert.equal(readBootState(vars({ ...base, eos_B_size: "4096" })).slots.B.size, 4096);
  // A size that is not a byte count is no record at all: never NaN, negative or fractional.
  for (const size of ["x", "-1", "1.5", "0x10", "1e3"]) {
    assert.equal(readBootState(vars({ ...base, eos_B_size: size })).slots.B.size, undefined, size);
  }
});

// --------------------------------------------------------------------------------------------- markInvalid

test("markInvalid: forgets what the slot held, keeps where it is, touches nothing else", () => {
  const before = markTrial(shipped(), "B", NEW, 3);
  const snapshot = new Map(before);
  const next = persisted(markInvalid(rollbackTo(before, "A"), "B"));
  assert.deepEqual(before, snapshot, "the input map is not modified");
  assert.equal(next.get("eos_B_version"), "");
  assert.equal(next.get("eos_B_sha256"), "");
  assert.equal(next.get("eos_B_size"), "");
  assert.equal(next.get("eos_B_part"), "gpt3");
  assert.equal(next.get("eos_B_uuid"), B_UUID.toLowerCase());
  for (const name of ["eos_default", "eos_A_version", "eos_A_sha256", "eos_A_size", "eos_cmdline"]) {
    assert.equal(next.get(name), before.get(name), name);
  }
  const state = readBootState(next);
  assert.equal(state.slots.B.sha256, undefined, "empty sha256 = invalid (docs/boot-control.md)");
  assert.equal(state.slots.B.size, undefined);
  assert.equal(state.slots.B.version, undefined);
});

test("markInvalid: a slot on trial is taken off trial, so a write cut short is never booted", () => {
  const onTrial = markTrial(shipped(), "B", NEW, 3);
  const next = persisted(markInvalid(onTrial, "B"));
  assert.equal(next.get("eos_trial"), "");
  assert.equal(next.get("eos_tries"), "0");
  assert.equal(grubBoot(next).slot, "A");
  assert.equal(onTrial.get("eos_trial"), "B", "the input map is not modified");
});

test("markInvalid: a trial of the other slot is left alone", () => {
  // Not a state os-update makes, but markInvalid must clear only the slot it invalidates.
  const odd = vars({ ...Object.fromEntries(shipped()), eos_default: "A", eos_trial: "A", eos_tries: "2" });
  const next = markInvalid(odd, "B");
  assert.equal(next.get("eos_trial"), "A");
  assert.equal(next.get("eos_tries"), "2");
});

test("markInvalid: the default slot is never overwritten", () => {
  assert.throws(() => markInvalid(shipped(), "A"), isCode("SLOT", /slot A is the default/));
  assert.throws(() => markInvalid(rollbackTo(shipped(), "B"), "B"), isCode("SLOT", /slot B is the default/));
  assert.throws(() => markInvalid(new Map(), "B"), isCode("BOOT_CONTROL"));
});

// --------------------------------------------------------------------------------------------- markTrial

test("markTrial: records the new content and puts the slot on trial for exactly `tries` boots", () => {
  const before = markInvalid(shipped(), "B");
  const snapshot = new Map(before);
  const next = persisted(markTrial(before, "B", NEW, 3));
  assert.deepEqual(before, snapshot, "the input map is not modified");
  assert.equal(next.get("eos_trial"), "B");
  assert.equal(next.get("eos_tries"), "3");
  assert.equal(next.get("eos_default"), "A", "the default stays until the commit");
  assert.equal(next.get("eos_B_version"), "1.3.0");
  assert.equal(next.get("eos_B_sha256"), B_SHA);
  assert.equal(next.get("eos_B_size"), "314572800");
  assert.equal(next.get("eos_A_sha256"), A_SHA);
  const state = readBootState(next);
  assert.deepEqual(
    { trial: state.trial, tries: state.tries, B: state.slots.B },
    {
      trial: "B",
      tries: 3,
      B: {
        part: "gpt3",
        uuid: B_UUID.toLowerCase(),
        version: "1.3.0",
        sha256: B_SHA,
        size: 314572800,
        verity: undefined,
      },
    },
  );
});

test("markTrial: tries are 1..9, what GRUB's decrement table covers", () => {
  for (const tries of [1, MAX_TRIES]) {
    assert.equal(markTrial(shipped(), "B", NEW, tries).get("eos_tries"), String(tries));
  }
  for (const tries of [0, -1, MAX_TRIES + 1, 100]) {
    assert.throws(
      () => markTrial(shipped(), "B", NEW, tries),
      isCode("USAGE", /tries must be 1\.\.9/),
      String(tries),
    );
  }
});

// --------------------------------------------------------------------------------------------- commitSlot

test("commitSlot: the running trial slot becomes the default and the trial is cleared", () => {
  const trial = markTrial(markInvalid(shipped(), "B"), "B", NEW, 3);
  const snapshot = new Map(trial);
  const { vars: next, changed } = commitSlot(trial, "B");
  assert.equal(changed, true);
  persisted(next);
  assert.deepEqual(trial, snapshot, "the input map is not modified");
  assert.equal(next.get("eos_default"), "B");
  assert.equal(next.get("eos_trial"), "");
  assert.equal(next.get("eos_tries"), "0");
  assert.equal(next.get("eos_B_sha256"), B_SHA, "the record stays");
  assert.equal(next.get("eos_A_sha256"), A_SHA, "the old slot stays recorded for --rollback");
  const state = readBootState(next);
  assert.equal(state.defaultSlot, "B");
  assert.equal(state.trial, undefined);
  assert.equal(state.tries, 0);
  // GRUB now boots B without COMMIT_UPDATE, and keeps doing so; it only counts the boot until
  // the system confirms it.
  const boot = grubBoot(next);
  assert.equal(boot.slot, "B");
  assert.equal(parseKernelCommandLine(boot.cmdline).commitUpdate, false);
  assert.deepEqual(boot.env, new Map([...next, ["eos_unconfirmed", "1"]]));
  assert.deepEqual(cameUp(boot), next);
});

test("commitSlot: the trial slot commits with no tries left (it was booted by the last one)", () => {
  const trial = markTrial(shipped(), "B", NEW, 1);
  const afterLastTry = grubBoot(trial);
  assert.equal(afterLastTry.slot, "B");
  assert.equal(afterLastTry.env.get("eos_tries"), "0");
  const { vars: next, changed } = commitSlot(afterLastTry.env, "B");
  assert.equal(changed, true);
  assert.equal(next.get("eos_default"), "B");
  assert.equal(next.get("eos_trial"), "");
});

test("commitSlot: committing the default slot is a no-op that changes nothing", () => {
  const base = shipped();
  const r = commitSlot(base, "A");
  assert.equal(r.changed, false);
  assert.equal(r.vars, base, "the same block comes back: nothing to write");
  // The default running while the other slot is on trial (e.g. booted from GRUB's fallback entry).
  const trial = markTrial(shipped(), "B", NEW, 2);
  const r2 = commitSlot(trial, "A");
  assert.equal(r2.changed, false);
  assert.equal(r2.vars.get("eos_trial"), "B", "the trial is not touched");
  assert.equal(r2.vars.get("eos_tries"), "2");
  assert.equal(r2.vars.get("eos_default"), "A");
});

test("commitSlot: a running slot that is neither on trial nor the default is refused", () => {
  assert.throws(
    () => commitSlot(shipped(), "B"),
    (error: unknown) => {
      assert.ok(error instanceof EosError);
      assert.equal(error.code, "BOOT_CONTROL");
      assert.match(error.message, /slot B is running but is neither on trial nor the default/);
      assert.match(error.hint ?? "", /tries ran out/);
      return true;
    },
  );
  assert.throws(() => commitSlot(new Map(), "A"), isCode("BOOT_CONTROL", /eos_default/));
});

// --------------------------------------------------------------------------------------------- rollbackTo

test("rollbackTo: the target becomes the default, any trial is cleared, records stay", () => {
  const committed = commitSlot(markTrial(shipped(), "B", NEW, 3), "B").vars;
  const snapshot = new Map(committed);
  const back = persisted(rollbackTo(committed, "A"));
  assert.deepEqual(committed, snapshot, "the input map is not modified");
  assert.equal(back.get("eos_default"), "A");
  assert.equal(back.get("eos_trial"), "");
  assert.equal(back.get("eos_tries"), "0");
  assert.equal(back.get("eos_A_sha256"), A_SHA);
  assert.equal(back.get("eos_B_sha256"), B_SHA);
  assert.equal(grubBoot(back).slot, "A");
  // A rollback while a slot is on trial ends the trial too: GRUB boots the target next.
  const onTrial = markTrial(rollbackTo(shipped(), "A"), "B", NEW, 3);
  const r = rollbackTo(onTrial, "A");
  assert.equal(r.get("eos_trial"), "");
  assert.equal(r.get("eos_tries"), "0");
  const boot = grubBoot(r);
  assert.equal(boot.slot, "A");
  assert.equal(parseKernelCommandLine(boot.cmdline).commitUpdate, false);
});

// --------------------------------------------------------------------------------------------- fallback

/** B committed (2.0.0, with a dm-verity record), A still holding the verified 1.2.0. */
function committedB(): Map<string, string> {
  const trial = markTrial(
    markInvalid(shipped(), "B"),
    "B",
    { ...NEW, verity: `${"cd".repeat(32)}:51200` },
    3,
  );
  return persisted(commitSlot(trial, "B").vars);
}

test("unconfirmed: a committed slot that never comes up gets UNCONFIRMED_LIMIT boots, then the other verified slot", () => {
  let env = committedB();
  for (let n = 1; n <= UNCONFIRMED_LIMIT; n++) {
    const boot = grubBoot(env);
    assert.equal(boot.slot, "B", `boot ${n} is still the committed slot`);
    env = persisted(boot.env); // it panics (a root that fails dm-verity): no confirmation
    assert.equal(env.get("eos_unconfirmed"), String(n));
  }
  const fallback = grubBoot(env);
  assert.equal(fallback.slot, "A");
  assert.equal(parseKernelCommandLine(fallback.cmdline).commitUpdate, false);
  env = cameUp(fallback);
  assert.equal(readBootState(env).defaultSlot, "A", "the fallback is the new default");
  assert.equal(env.get("eos_unconfirmed"), "");
  assert.equal(grubBoot(env).slot, "A");
});

test("unconfirmed: with no other verified slot GRUB keeps booting the committed one", () => {
  let env = shipped(); // B holds nothing
  for (let n = 0; n < 2 * UNCONFIRMED_LIMIT; n++) {
    const boot = grubBoot(env);
    assert.equal(boot.slot, "A");
    env = persisted(boot.env);
  }
  const halfWritten = persisted(markInvalid(committedB(), "A"));
  let env2 = halfWritten;
  for (let n = 0; n < 2 * UNCONFIRMED_LIMIT; n++) env2 = persisted(grubBoot(env2).env);
  assert.equal(grubBoot(env2).slot, "B", "a slot whose write never finished is no fallback");
});

test("unconfirmed: a confirmed boot resets the count, an unconfirmed one is never confirmed for another slot", () => {
  let env = committedB();
  env = persisted(grubBoot(env).env);
  env = persisted(grubBoot(env).env);
  assert.equal(env.get("eos_unconfirmed"), "2");
  assert.equal(confirmBoot(env, "A").changed, false, "A is not the default: nothing to confirm");
  env = cameUp(grubBoot(env));
  assert.equal(env.get("eos_unconfirmed"), "");
  assert.equal(confirmBoot(env, "B").changed, false, "nothing counted: no write");
  assert.equal(rollbackTo(persisted(grubBoot(env).env), "A").get("eos_unconfirmed"), "");
});

test("verity: each slot boots with its own eos.verity, through GRUB and through kexec", () => {
  const env = committedB();
  assert.equal(env.get("eos_B_verity"), `${"cd".repeat(32)}:51200`);
  assert.match(grubBoot(env).cmdline, new RegExp(`eos.slot=B panic=10 eos.verity=${"cd".repeat(32)}:51200 `));
  assert.equal(readBootState(env).slots.B.verity, `${"cd".repeat(32)}:51200`);
  assert.doesNotMatch(grubBoot(rollbackTo(env, "A")).cmdline, /eos.verity/, "A was built without a tree");
  assert.equal(
    markInvalid(rollbackTo(env, "A"), "B").get("eos_B_verity"),
    "",
    "a slot being written has none",
  );
  const line = kexecCommandLine(
    `console=ttyS0 eos.verity=${"ab".repeat(32)}:9 eos.slot=A`,
    B_UUID,
    "B",
    "ef".repeat(32) + ":7",
  );
  assert.equal(line.match(/eos\.verity=/g)?.length, 1);
  assert.match(line, new RegExp(`eos.verity=${"ef".repeat(32)}:7 COMMIT_UPDATE$`));
  assert.doesNotMatch(kexecCommandLine("console=ttyS0 eos.verity=x:1", B_UUID, "B"), /eos.verity/);
});

test("fallback: an update that never commits gets exactly `tries` GRUB boots, then the default boots", () => {
  for (let tries = 1; tries <= MAX_TRIES; tries++) {
    let env = persisted(markTrial(markInvalid(shipped(), "B"), "B", NEW, tries));
    // The kexec boot right after --apply does not go through GRUB; every reset from here on does.
    for (let n = tries - 1; n >= 0; n--) {
      const boot = grubBoot(env);
      env = persisted(boot.env);
      assert.equal(boot.slot, "B", `tries=${tries}: boot ${tries - n} is the trial slot`);
      const cmd = parseKernelCommandLine(boot.cmdline);
      assert.deepEqual(cmd, { rootPartuuid: B_UUID, slot: "B", commitUpdate: true });
      const state = readBootState(env);
      assert.equal(state.trial, "B");
      assert.equal(state.tries, n);
    }
    const fallback = grubBoot(env);
    assert.equal(fallback.slot, "A", `tries=${tries}: falls back after ${tries} trial boots`);
    assert.deepEqual(parseKernelCommandLine(fallback.cmdline), {
      rootPartuuid: A_UUID,
      slot: "A",
      commitUpdate: false,
    });
    env = persisted(fallback.env);
    const state = readBootState(env);
    assert.equal(state.defaultSlot, "A");
    assert.equal(state.trial, undefined);
    assert.equal(state.tries, 0);
    assert.equal(state.slots.B.sha256, B_SHA, "the slot stays recorded: --rollback can still verify it");
    // The committed slot runs again: update_commit.service does not run (no COMMIT_UPDATE); --commit
    // by hand is a no-op there, and the abandoned slot cannot commit any more.
    assert.equal(commitSlot(env, "A").changed, false);
    assert.throws(() => commitSlot(env, "B"), isCode("BOOT_CONTROL", /neither on trial nor the default/));
    // And GRUB keeps booting A, each boot confirmed once the system is up.
    for (let i = 0; i < UNCONFIRMED_LIMIT + 2; i++) {
      const again = grubBoot(env);
      assert.equal(again.slot, "A");
      env = cameUp(again);
    }
    assert.equal(env.get("eos_unconfirmed"), "");
  }
});

test("fallback: a commit during the trial stops the counting", () => {
  const first = grubBoot(markTrial(shipped(), "B", NEW, 3)); // one trial boot used, the system came up
  const running = parseKernelCommandLine(first.cmdline);
  assert.equal(running.commitUpdate, true);
  let env = commitSlot(first.env, running.slot as Slot).vars;
  for (let i = 0; i < 5; i++) {
    const boot = grubBoot(env);
    assert.equal(boot.slot, "B");
    assert.equal(parseKernelCommandLine(boot.cmdline).commitUpdate, false);
    env = cameUp(boot);
  }
  assert.equal(readBootState(env).defaultSlot, "B");
});

test("fallback: the states GRUB leaves for a trial it cannot honour read as no trial", () => {
  const base = Object.fromEntries(markTrial(shipped(), "B", NEW, 3));
  const cases: Array<[string, Record<string, string>]> = [
    ["tries garbage", { ...base, eos_tries: "x" }],
    ["tries empty", { ...base, eos_tries: "" }],
    ["tries 0", { ...base, eos_tries: "0" }],
    ["tries 10 (beyond the table)", { ...base, eos_tries: "10" }],
    ["trial garbage", { ...base, eos_trial: "C" }],
    ["trial B on a disk without B", { ...base, eos_B_part: "" }],
  ];
  for (const [why, env] of cases) {
    const boot = grubBoot(vars(env));
    assert.equal(boot.slot, "A", why);
    assert.equal(parseKernelCommandLine(boot.cmdline).commitUpdate, false, why);
    const state = readBootState(boot.env);
    assert.equal(state.trial, undefined, why);
    assert.equal(state.tries, 0, why);
    assert.equal(state.defaultSlot, "A", why);
  }
});

// --------------------------------------------------------------------------------------------- command lines

test("kexecCommandLine: root=PARTUUID and eos.slot replaced, COMMIT_UPDATE added once, other words kept", () => {
  const current =
    "BOOT_IMAGE=/boot/vmlinuz root=PARTUUID=0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9 eos.slot=A panic=10 console=ttyS0,115200 rootfstype=squashfs quiet\n";
  assert.equal(
    kexecCommandLine(current, B_UUID, "B"),
    `panic=10 console=ttyS0,115200 rootfstype=squashfs quiet root=PARTUUID=${B_UUID.toLowerCase()} eos.slot=B COMMIT_UPDATE`,
  );
});

test("kexecCommandLine: a running trial slot's line (with COMMIT_UPDATE) gives one COMMIT_UPDATE", () => {
  const current = `root=PARTUUID=${B_UUID.toLowerCase()} eos.slot=B panic=10 console=ttyS0 COMMIT_UPDATE`;
  const line = kexecCommandLine(current, A_UUID, "A");
  assert.equal(line.split(" ").filter((w) => w === "COMMIT_UPDATE").length, 1);
  assert.equal(line.split(" ").filter((w) => w.startsWith("root=")).length, 1);
  assert.equal(line.split(" ").filter((w) => w.startsWith("eos.slot=")).length, 1);
  assert.equal(line, `panic=10 console=ttyS0 root=PARTUUID=${A_UUID.toLowerCase()} eos.slot=A COMMIT_UPDATE`);
});

test("kexecCommandLine: replaces any root= (not only PARTUUID) and keeps look-alike words", () => {
  const line = kexecCommandLine(
    "  root=/dev/sda2   rootwait rootfstype=squashfs eos.slotx=1 COMMIT_UPDATE=0 xCOMMIT_UPDATE  ",
    B_UUID,
    "B",
  );
  assert.equal(
    line,
    `rootwait rootfstype=squashfs eos.slotx=1 COMMIT_UPDATE=0 xCOMMIT_UPDATE root=PARTUUID=${B_UUID.toLowerCase()} eos.slot=B COMMIT_UPDATE`,
  );
  assert.equal(
    kexecCommandLine("", B_UUID, "B"),
    `root=PARTUUID=${B_UUID.toLowerCase()} eos.slot=B COMMIT_UPDATE`,
  );
});

test("kexecCommandLine and parseKernelCommandLine agree on what the new kernel sees", () => {
  for (const slot of ["A", "B"] as const) {
    const uuid = slot === "A" ? A_UUID : B_UUID;
    const line = kexecCommandLine("console=ttyS0 root=PARTUUID=ffff eos.slot=X", uuid, slot);
    assert.deepEqual(parseKernelCommandLine(line), { rootPartuuid: uuid, slot, commitUpdate: true });
  }
});

test("parseKernelCommandLine: root PARTUUID (upper-cased), eos.slot and COMMIT_UPDATE", () => {
  assert.deepEqual(
    parseKernelCommandLine(
      `BOOT_IMAGE=/boot/vmlinuz root=PARTUUID=${A_UUID.toLowerCase()} eos.slot=A panic=10\n`,
    ),
    { rootPartuuid: A_UUID, slot: "A", commitUpdate: false },
  );
  assert.deepEqual(parseKernelCommandLine(`root=partuuid=${B_UUID.toLowerCase()} eos.slot=B COMMIT_UPDATE`), {
    rootPartuuid: B_UUID,
    slot: "B",
    commitUpdate: true,
  });
});

test("parseKernelCommandLine: what is not the contract is undefined or false", () => {
  assert.deepEqual(parseKernelCommandLine(""), {
    rootPartuuid: undefined,
    slot: undefined,
    commitUpdate: false,
  });
  const odd = parseKernelCommandLine(
    "root=/dev/sda2 rootfstype=PARTUUID=x eos.slot=C COMMIT_UPDATE=1 xCOMMIT_UPDATE eos.slotx=A",
  );
  assert.deepEqual(odd, { rootPartuuid: undefined, slot: undefined, commitUpdate: false });
  assert.equal(parseKernelCommandLine("eos.slot=a").slot, undefined);
  assert.equal(parseKernelCommandLine("eos.slot=").slot, undefined);
  assert.equal(parseKernelCommandLine("root=UUID=1234").rootPartuuid, undefined);
  assert.equal(parseKernelCommandLine("quiet   eos.slot=B\tCOMMIT_UPDATE\n").slot, "B");
  assert.equal(parseKernelCommandLine("quiet   eos.slot=B\tCOMMIT_UPDATE\n").commitUpdate, true);
});

// --------------------------------------------------------------------------------------------- grubenv

test("grubenv: every transition's block is 1024 bytes, even with both slots recorded and a long cmdline", () => {
  const full = vars({
    ...Object.fromEntries(shipped()),
    eos_cmdline: `console=ttyS0,115200 rootfstype=squashfs ${"x".repeat(200)}`,
  });
  let env = markTrial(markInvalid(full, "B"), "B", { ...NEW, version: "v".repeat(64) }, MAX_TRIES);
  env = persisted(env);
  env = persisted(commitSlot(env, "B").vars);
  env = persisted(rollbackTo(env, "A"));
  assert.equal(readBootState(env).slots.B.version, "v".repeat(64));
});

test("grubenv: a block GRUB or a person could leave behind is refused or read as written", () => {
  const good = encodeGrubenv(shipped());
  assert.throws(
    () => decodeGrubenv(good.subarray(0, 1000), "ESP/grubenv"),
    isCode("BOOT_CONTROL", /ESP\/grubenv: .*1000 bytes/),
  );
  assert.throws(
    () => decodeGrubenv(Buffer.concat([good, Buffer.from("#")]), "ESP/grubenv"),
    isCode("BOOT_CONTROL", /1025 bytes, not 1024/),
  );
  assert.throws(
    () => decodeGrubenv(Buffer.alloc(1024, "#"), "ESP/grubenv"),
    isCode("BOOT_CONTROL", /not a GRUB environment block/),
  );
  // grub-editenv escapes backslashes; lines without a name are ignored.
  const text = "# GRUB Environment Block\neos_default=B\neos_cmdline=a\\\\b\n=x\nnoequals\n";
  const vars2 = decodeGrubenv(Buffer.from(text.padEnd(1024, "#"), "latin1"));
  assert.equal(vars2.get("eos_default"), "B");
  assert.equal(vars2.get("eos_cmdline"), "a\\b");
  assert.equal(vars2.size, 2);
  // What GRUB could not read back is never written.
  assert.throws(() => encodeGrubenv(vars({ eos_cmdline: "a\nb" })), isCode("BOOT_CONTROL", /eos_cmdline/));
  assert.throws(() => encodeGrubenv(vars({ eos_cmdline: "a\\b" })), isCode("BOOT_CONTROL", /eos_cmdline/));
  assert.throws(() => encodeGrubenv(vars({ "eos-x": "1" })), isCode("BOOT_CONTROL", /eos-x/));
  assert.throws(
    () => encodeGrubenv(vars({ eos_cmdline: "x".repeat(1024) })),
    isCode("BOOT_CONTROL", /1024-byte/),
  );
});

// ------------------------------------------------------------------------------- fallback detection

test("fell back: a trial whose tries ran out is reported once at the next boot of the old slot", () => {
  let env = persisted(markTrial(markInvalid(shipped(), "B"), "B", NEW, 2));
  assert.equal(detectFallback(env, "A").fellBack, undefined, "still on trial: not a fallback yet");
  for (let n = 0; n < 2; n++) env = persisted(grubBoot(env).env); // trial boots that never commit
  const back = grubBoot(env);
  assert.equal(back.slot, "A");
  const found = detectFallback(persisted(back.env), "A");
  assert.deepEqual(found.fellBack, { version: "1.3.0", slot: "A", why: "tries-ran-out" });
  assert.equal(detectFallback(persisted(found.vars), "A").fellBack, undefined, "reported once");
});

test("fell back: GRUB's switch after unconfirmed boots of the committed slot is reported once", () => {
  let env = committedB();
  for (let n = 0; n < UNCONFIRMED_LIMIT; n++) env = persisted(grubBoot(env).env);
  const switched = grubBoot(env);
  assert.equal(switched.slot, "A");
  const found = detectFallback(persisted(switched.env), "A");
  assert.deepEqual(found.fellBack, { version: "1.3.0", slot: "A", why: "unconfirmed" });
  assert.equal(detectFallback(cameUp({ ...switched, env: found.vars }), "A").fellBack, undefined);
});

test("not a fallback: a commit, a confirmed boot, an operator's rollback", () => {
  const committed = committedB();
  assert.equal(committed.get("eos_pending"), "");
  assert.equal(detectFallback(cameUp(grubBoot(committed)), "B").fellBack, undefined);
  const rolled = persisted(rollbackTo(committed, "A"));
  assert.equal(detectFallback(cameUp(grubBoot(rolled)), "A").fellBack, undefined);
  const rewritten = persisted(markInvalid(persisted(markTrial(shipped(), "B", NEW, 3)), "B"));
  assert.equal(
    detectFallback(rewritten, "A").fellBack,
    undefined,
    "a slot being written again is no fallback",
  );
});

// --------------------------------------------------------------------------------------------- markStaged

test("markStaged: records what the slot holds without a trial; GRUB still boots the default", () => {
  const before = shipped();
  const next = persisted(markStaged(before, "B", NEW));
  const state = readBootState(next);
  assert.equal(state.staged, "B");
  assert.deepEqual([state.trial, state.tries, state.defaultSlot], [undefined, 0, "A"]);
  assert.equal(next.get("eos_pending") ?? "", "", "nothing waits for trial boots");
  assert.deepEqual(
    [state.slots.B.version, state.slots.B.sha256, state.slots.B.size],
    [NEW.version, B_SHA, NEW.size],
  );
  for (let boot = 0; boot < 5; boot++) assert.equal(grubBoot(next).slot, "A");
  assert.equal(before.get("eos_staged"), undefined, "the input map is not modified");
});

test("markStaged: refuses the default slot and a slot on trial", () => {
  assert.throws(() => markStaged(shipped(), "A", NEW), isCode("SLOT", /slot A is the default or on trial/));
  assert.throws(() => markStaged(markTrial(shipped(), "B", NEW, 3), "B", NEW), isCode("SLOT"));
});

test("markStaged: putting the slot on trial or invalidating it clears the mark", () => {
  const staged = markStaged(shipped(), "B", NEW);
  assert.equal(readBootState(markTrial(staged, "B", NEW, 3)).staged, undefined);
  assert.equal(readBootState(markInvalid(staged, "B")).staged, undefined);
  assert.equal(readBootState(markInvalid(markStaged(shipped(), "B", NEW), "B")).slots.B.sha256, undefined);
});

test("recordedAs: only the exact content, and never the default slot", () => {
  const state = readBootState(markStaged(shipped(), "B", NEW));
  assert.equal(recordedAs(state, "B", NEW), true);
  assert.equal(recordedAs(state, "B", { ...NEW, version: "1.3.1" }), false);
  assert.equal(recordedAs(state, "B", { ...NEW, sha256: A_SHA }), false);
  assert.equal(recordedAs(state, "B", { ...NEW, size: NEW.size + 1 }), false);
  assert.equal(recordedAs(state, "B", { ...NEW, verity: "ab:12" }), false);
  assert.equal(recordedAs(readBootState(shipped()), "B", NEW), false, "an empty slot");
  const a = readBootState(shipped()).slots.A;
  const running = { version: a.version as string, sha256: a.sha256 as string, size: a.size as number };
  assert.equal(recordedAs(readBootState(shipped()), "A", running), false, "the default slot");
});
