/**
 * Power cuts at every state (issue 11): os-update runs as a process against a
 * disk image file and an ESP directory, and is SIGKILLed at each named step
 * of --apply, --commit, --rollback and --firmware (EOS_TEST_CRASH_AT, see
 * src/io/crash-point.ts). After each kill the disk must be bootable and
 * honest: the boot control block is a whole 1024-byte block, its default
 * slot verifies against the sha256 it records, no slot is on trial or
 * recorded that does not verify, nothing outside the slot being written
 * changed (the registry partition p.spare keeps its bytes, the ESP's EFI/
 * and the other slot are untouched). Then the same command, run again
 * normally, must finish the job and leave nothing of the killed run behind.
 *
 * A SIGKILL is not a power cut: what the killed process had written stays
 * in the page cache and reaches the disk. This tier proves the order of the
 * writes (what each step may leave behind); the fsyncs that make that order
 * hold across a real power cut are for the vm tier's QEMU power cuts.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { copyFile, mkdir, mkdtemp, open, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import type { ChildProcess } from "node:child_process";
import { CRASH_ENV, CRASH_STEPS, type CrashStep } from "../../src/io/crash-point.ts";
import { decodeGrubenv, encodeGrubenv, GRUBENV_SIZE } from "../../src/core/update/grubenv.ts";
import { readBootState, type Slot } from "../../src/core/update/bootctl.ts";
import { partitionRange, readGpt, requirePartition, type ByteRange } from "../../src/core/gpt.ts";
import { openBlockSource } from "../../src/io/files.ts";
import { DIST, runEos, run } from "../helpers/run.ts";
import { startServer } from "../helpers/serve.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";

const NAME = "EOS.x86_64-AB";
const MiB = 1024 * 1024;
const LABELS = ["p.UEFI", "p.lxreadonly", "p.lxrootclone1", "p.spare"] as const;
type Label = (typeof LABELS)[number];
const SLOT_LABEL: Record<Slot, Label> = { A: "p.lxreadonly", B: "p.lxrootclone1" };
const LOADER = "EFI/BOOT/BOOTX64.EFI";
const GRUBENV = "EFI/BOOT/grubenv";

/** Firmware files on the ESP: what v1 put there, what the server's v3 brings, what v3 no longer has. */
const FIRMWARE = {
  old: { "fw.txt": "firmware for 1.0.0\n", "fw-2.txt": "second firmware file for 1.0.0\n" },
  new: { "fw.txt": "firmware for 3.0.0\n", "fw-2.txt": "second firmware file for 3.0.0\n" },
  stale: { "old-only-1.bin": "a blob v3 dropped\n", "old-only-2.bin": "another blob v3 dropped\n" },
} as const;

type Command = "--apply" | "--commit" | "--rollback" | "--firmware";
/**
 * v1: slot A holds 1.0.0 and is the default (GRUB has counted one unconfirmed
 * boot of it), slot B was never written.
 * applied: 2.0.0 written into B, on trial. committed: B the default.
 * rolled-back: A the default again, B still holding (and recording) 2.0.0.
 * The server offers 3.0.0 to all of them.
 */
type StateName = "v1" | "applied" | "committed" | "rolled-back";

interface Row {
  step: CrashStep;
  command: Command;
  /** The disk and ESP the command starts from. */
  from: StateName;
  /** Boot control right after the kill. */
  killed: { default: Slot; trial: Slot | "" };
  /** --firmware: files switched to v3's, staged *.eos-new files, stale files left, right after the kill. */
  firmware?: { switched: number; staged: number; stale: number };
}

const FROM_V1 = { default: "A", trial: "" } as const;
const ROLLED_BACK = FROM_V1;
const TRIAL_B = { default: "A", trial: "B" } as const;
const DEFAULT_B = { default: "B", trial: "" } as const;
const DEFAULT_A = { default: "A", trial: "" } as const;

/** One row per crash step: the test fails when a step has no row or is never reached. */
const ROWS: Row[] = [
  { step: "apply:checked", command: "--apply", from: "rolled-back", killed: ROLLED_BACK },
  { step: "apply:invalidate:before-rename", command: "--apply", from: "rolled-back", killed: ROLLED_BACK },
  { step: "apply:invalidated", command: "--apply", from: "rolled-back", killed: ROLLED_BACK },
  { step: "apply:slot-partly-written", command: "--apply", from: "rolled-back", killed: ROLLED_BACK },
  { step: "apply:slot-written", command: "--apply", from: "rolled-back", killed: ROLLED_BACK },
  { step: "apply:slot-verified", command: "--apply", from: "rolled-back", killed: ROLLED_BACK },
  { step: "apply:trial:before-rename", command: "--apply", from: "rolled-back", killed: ROLLED_BACK },
  { step: "apply:trial", command: "--apply", from: "rolled-back", killed: TRIAL_B },
  { step: "commit:before-rename", command: "--commit", from: "applied", killed: TRIAL_B },
  { step: "commit:written", command: "--commit", from: "applied", killed: DEFAULT_B },
  // v1 as GRUB leaves it after a boot of the committed slot: --commit confirms that boot.
  { step: "confirm:before-rename", command: "--commit", from: "v1", killed: FROM_V1 },
  { step: "rollback:verified", command: "--rollback", from: "committed", killed: DEFAULT_B },
  { step: "rollback:before-rename", command: "--rollback", from: "committed", killed: DEFAULT_B },
  { step: "rollback:written", command: "--rollback", from: "committed", killed: DEFAULT_A },
  ...(
    [
      ["firmware:downloaded", { switched: 0, staged: 0, stale: 2 }],
      ["firmware:staged-partly", { switched: 0, staged: 1, stale: 2 }],
      ["firmware:staged", { switched: 0, staged: 2, stale: 2 }],
      ["firmware:switched-partly", { switched: 1, staged: 1, stale: 2 }],
      ["firmware:switched", { switched: 2, staged: 0, stale: 2 }],
      ["firmware:removed-partly", { switched: 2, staged: 0, stale: 1 }],
    ] as const
  ).map(([step, firmware]) => ({
    step,
    command: "--firmware" as const,
    from: "v1" as const,
    killed: FROM_V1,
    firmware,
  })),
];

interface Manifest {
  version: string;
  partitions: { root: { sha256: string; size: number } };
}

/** A device: EOS_ROOT with its configuration and keys, the disk image file and the ESP directory. */
interface Device {
  root: string;
  disk: string;
  esp: string;
}

function sha256(data: Buffer | string): string {
  return createHash("sha256").update(data).digest("hex");
}

async function layout(disk: string): Promise<Record<Label, ByteRange>> {
  const source = await openBlockSource(disk);
  try {
    const { table } = await readGpt(source);
    const out = {} as Record<Label, ByteRange>;
    for (const label of LABELS) out[label] = partitionRange(table, requirePartition(table, label));
    return out;
  } finally {
    await source.close();
  }
}

async function hashOf(disk: string, offset: number, length: number): Promise<string> {
  const handle = await open(disk, "r");
  try {
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, offset);
    return sha256(buffer);
  } finally {
    await handle.close();
  }
}

/** sha256 of each partition, and of the GPT areas (first and last MiB). */
async function diskHashes(disk: string): Promise<Record<Label | "gpt", string>> {
  const ranges = await layout(disk);
  const out = {} as Record<Label | "gpt", string>;
  for (const label of LABELS) out[label] = await hashOf(disk, ranges[label].offset, ranges[label].length);
  const { size } = await stat(disk);
  out.gpt = (await hashOf(disk, 0, MiB)) + (await hashOf(disk, size - MiB, MiB));
  return out;
}

/** Every file under the ESP, path → content. */
async function espFiles(esp: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const entry of await readdir(esp, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const full = join(entry.parentPath, entry.name);
    out.set(relative(esp, full), await readFile(full, "latin1"));
  }
  return out;
}

async function copyDevice(from: Device, to: string): Promise<Device> {
  const device: Device = { root: to, disk: join(to, "disk.raw"), esp: join(to, "boot/efi") };
  await mkdir(to, { recursive: true });
  await copyFile(from.disk, device.disk);
  for (const [path, content] of await espFiles(from.esp)) {
    await mkdir(join(device.esp, path, ".."), { recursive: true });
    await writeFile(join(device.esp, path), content, "latin1");
  }
  for (const path of ["etc/os-update.yml", "usr/share/eos/keys/release-0.pub"]) {
    await mkdir(join(to, path, ".."), { recursive: true });
    await copyFile(join(from.root, path), join(to, path));
  }
  return device;
}

function osUpdate(device: Device, command: Command, crashAt?: CrashStep) {
  const env: NodeJS.ProcessEnv = { ...process.env, EOS_ROOT: device.root };
  delete env[CRASH_ENV];
  if (crashAt) env[CRASH_ENV] = crashAt;
  return run(
    process.execPath,
    [join(DIST, "os-update.mjs"), command, "--root-device", device.disk, "--esp", device.esp],
    { env },
  );
}

/**
 * The invariant after any kill: a whole boot control block; its default slot
 * and its trial slot (if any) verify, and so does every slot it records a
 * sha256 for; the bytes of every partition but `writable` are unchanged; the
 * ESP's EFI/ (but the boot control block) is untouched.
 */
async function checkInvariant(
  device: Device,
  before: { disk: Record<Label | "gpt", string>; esp: Map<string, string> },
  writable: Label | undefined,
): Promise<{ default: Slot; trial: Slot | "" }> {
  const block = await readFile(join(device.esp, GRUBENV));
  assert.equal(block.length, GRUBENV_SIZE, "the boot control block is a whole block");
  const state = readBootState(decodeGrubenv(block));
  const ranges = await layout(device.disk);
  for (const slot of ["A", "B"] as const) {
    const record = state.slots[slot];
    const bootable = state.defaultSlot === slot || state.trial === slot;
    if (bootable) assert.ok(record.sha256 && record.size, `bootable slot ${slot} has a recorded sha256`);
    if (!record.sha256) continue;
    assert.ok(record.size, `slot ${slot}: size recorded with its sha256`);
    const actual = await hashOf(device.disk, ranges[SLOT_LABEL[slot]].offset, record.size);
    assert.equal(actual, record.sha256, `slot ${slot} verifies against its recorded sha256`);
  }
  if (state.trial) assert.ok(state.tries >= 1, "a trial slot has tries left");
  const now = await diskHashes(device.disk);
  for (const key of [...LABELS, "gpt"] as const) {
    if (key === writable) continue;
    assert.equal(
      now[key],
      before.disk[key],
      `${key} is unchanged${key === "p.spare" ? " (registry data)" : ""}`,
    );
  }
  const esp = await espFiles(device.esp);
  for (const [path, content] of before.esp) {
    if (path.startsWith("EFI/") && path !== GRUBENV)
      assert.equal(esp.get(path), content, `${path} untouched`);
  }
  return { default: state.defaultSlot, trial: state.trial ?? "" };
}

/** What a killed run may leave behind that the next run must clean up. */
async function leftovers(device: Device): Promise<string[]> {
  const found: string[] = [];
  for (const path of (await espFiles(device.esp)).keys())
    if (/\.tmp-|\.eos-new$/.test(path)) found.push(`ESP: ${path}`);
  const work = join(device.root, "run/os-update");
  for (const name of await readdir(work).catch(() => [] as string[]))
    if (!/^config-[0-9a-f]+\.json$/.test(name)) found.push(`/run/os-update/${name}`);
  return found;
}

describe("power cuts: os-update killed at every step", () => {
  let world: World;
  let server: ChildProcess;
  let dir: string;
  const states = {} as Record<StateName, Device>;
  const snapshots = {} as Record<
    StateName,
    { disk: Record<Label | "gpt", string>; esp: Map<string, string> }
  >;
  let v3: Manifest;

  before(async () => {
    world = await makeWorld();
    dir = await mkdtemp(join(tmpdir(), "eos-power-"));
    await writeServerConfig(world, [{ image: `${world.origin.url}/${NAME}.raw.xz`, name: NAME }]);
    // More than one 4 MiB block of root, so that a kill can land between two blocks.
    const payloadBytes = 6 * MiB;
    const v1Raw = await releaseImage(world, NAME, "1.0.0", {
      payloadBytes,
      firmwareFiles: { "fw-2.txt": FIRMWARE.old["fw-2.txt"] },
    });
    const v1 = JSON.parse(await readFile(`${v1Raw}.manifest.json`, "utf8")) as Manifest;
    await copyFile(v1Raw, join(dir, "v1.raw"));
    await releaseImage(world, NAME, "2.0.0", { payloadBytes });
    const publish = async () =>
      assert.equal((await runEos("os-update-server", ["fetch", "--config", world.config])).code, 0);
    await publish();
    const running = await startServer({ config: world.config });
    server = running.child;

    // The v1 device: slot A verified and the default, registry data on p.spare, v1's firmware on the ESP.
    const root = join(dir, "v1");
    const v1Device: Device = { root, disk: join(root, "disk.raw"), esp: join(root, "boot/efi") };
    await mkdir(join(v1Device.esp, "EFI/BOOT"), { recursive: true });
    await copyFile(join(dir, "v1.raw"), v1Device.disk);
    const ranges = await layout(v1Device.disk);
    const handle = await open(v1Device.disk, "r+");
    await handle.write(randomBytes(4 * MiB), 0, 4 * MiB, ranges["p.spare"].offset);
    await handle.close();
    const uuid = async (label: Label) => {
      const source = await openBlockSource(v1Device.disk);
      try {
        return requirePartition((await readGpt(source)).table, label).uniqueGuid;
      } finally {
        await source.close();
      }
    };
    const vars = new Map([
      ["eos_default", "A"],
      ["eos_trial", ""],
      ["eos_tries", "0"],
      ["eos_A_part", "gpt2"],
      ["eos_B_part", "gpt3"],
      ["eos_A_uuid", await uuid("p.lxreadonly")],
      ["eos_B_uuid", await uuid("p.lxrootclone1")],
      ["eos_A_version", v1.version],
      ["eos_A_sha256", v1.partitions.root.sha256],
      ["eos_A_size", String(v1.partitions.root.size)],
      ["eos_unconfirmed", "1"],
    ]);
    await writeFile(join(v1Device.esp, GRUBENV), encodeGrubenv(vars));
    await writeFile(join(v1Device.esp, LOADER), "the running OS's loader\n");
    for (const [name, content] of Object.entries({ ...FIRMWARE.old, ...FIRMWARE.stale }))
      await writeFile(join(v1Device.esp, name), content);
    await mkdir(join(root, "etc"), { recursive: true });
    await writeFile(join(root, "etc/os-update.yml"), `update:\n  name: ${NAME}\n  url: ${running.url}\n`);
    await mkdir(join(root, "usr/share/eos/keys"), { recursive: true });
    await copyFile(join(world.keysDir, "release.pub"), join(root, "usr/share/eos/keys/release-0.pub"));
    states.v1 = v1Device;

    // The same disk after a complete --apply (slot B on trial), and after its --commit.
    states.applied = await copyDevice(states.v1, join(dir, "applied"));
    const applied = await osUpdate(states.applied, "--apply");
    assert.equal(applied.code, 0, applied.stderr);
    states.committed = await copyDevice(states.applied, join(dir, "committed"));
    const committed = await osUpdate(states.committed, "--commit");
    assert.equal(committed.code, 0, committed.stderr);
    states["rolled-back"] = await copyDevice(states.committed, join(dir, "rolled-back"));
    const rolledBack = await osUpdate(states["rolled-back"], "--rollback");
    assert.equal(rolledBack.code, 0, rolledBack.stderr);
    // Now the server offers 3.0.0: the rolled-back device writes it over slot B's verified 2.0.0.
    const v3Raw = await releaseImage(world, NAME, "3.0.0", {
      payloadBytes,
      firmwareFiles: { "fw-2.txt": FIRMWARE.new["fw-2.txt"] },
    });
    v3 = JSON.parse(await readFile(`${v3Raw}.manifest.json`, "utf8")) as Manifest;
    await publish();
    for (const name of ["v1", "applied", "committed", "rolled-back"] as const) {
      snapshots[name] = { disk: await diskHashes(states[name].disk), esp: await espFiles(states[name].esp) };
    }
  });

  after(async () => {
    server?.kill("SIGTERM");
    await world?.origin.close();
    await rm(world?.dir ?? "/nonexistent", { recursive: true, force: true });
    await rm(dir ?? "/nonexistent", { recursive: true, force: true });
  });

  test("every crash step of os-update has exactly one row", () => {
    // The registry's steps are walked in registry.test.ts (cryptsetup on files).
    assert.deepEqual(
      ROWS.map((r) => r.step),
      CRASH_STEPS.filter((s) => !s.startsWith("registry:")),
    );
  });

  for (const [i, row] of ROWS.entries()) {
    test(`killed at ${row.step}: bootable and verified, then ${row.command} again finishes`, async () => {
      const device = await copyDevice(states[row.from], join(dir, `case-${i}`));
      const before = snapshots[row.from];
      const writable = row.command === "--apply" ? "p.lxrootclone1" : undefined;
      try {
        const killed = await osUpdate(device, row.command, row.step);
        assert.equal(
          killed.signal,
          "SIGKILL",
          `os-update ${row.command} reaches ${row.step} (exit ${killed.code}): ${killed.stderr}`,
        );
        const state = await checkInvariant(device, before, writable);
        assert.deepEqual(state, row.killed, "boot control right after the kill");
        if (row.firmware) {
          const esp = await espFiles(device.esp);
          const names = Object.keys(FIRMWARE.new) as Array<keyof typeof FIRMWARE.new>;
          for (const name of names)
            assert.ok(
              [FIRMWARE.old[name], FIRMWARE.new[name]].includes(esp.get(name) as never),
              `${name} is whole: the old file or the new one`,
            );
          assert.deepEqual(
            {
              switched: names.filter((n) => esp.get(n) === FIRMWARE.new[n]).length,
              staged: [...esp.keys()].filter((p) => p.endsWith(".eos-new")).length,
              stale: Object.keys(FIRMWARE.stale).filter((n) => esp.has(n)).length,
            },
            row.firmware,
          );
        } else {
          const esp = await espFiles(device.esp);
          for (const name of Object.keys({ ...FIRMWARE.old, ...FIRMWARE.stale }))
            assert.equal(esp.get(name), before.esp.get(name), `${name} untouched by ${row.command}`);
        }

        // The same command again, as a service would run it: it takes over the dead run's lock and finishes.
        const again = await osUpdate(device, row.command);
        assert.equal(again.code, 0, `${row.command} after the kill: ${again.stderr}`);
        assert.equal(again.signal, null);
        const done = await checkInvariant(device, before, writable);
        if (row.command === "--apply") {
          assert.deepEqual(done, TRIAL_B);
          const vars = decodeGrubenv(await readFile(join(device.esp, GRUBENV)));
          assert.equal(vars.get("eos_B_version"), v3.version);
          assert.equal(vars.get("eos_B_sha256"), v3.partitions.root.sha256);
        } else if (row.command === "--commit") {
          assert.deepEqual(done, row.from === "v1" ? FROM_V1 : DEFAULT_B);
          const vars = decodeGrubenv(await readFile(join(device.esp, GRUBENV)));
          assert.equal(vars.get("eos_unconfirmed"), "", "the boot is confirmed");
        } else if (row.command === "--rollback") {
          // A rollback repeated after the cut rolls back from wherever the cut left the default.
          assert.deepEqual(done, { default: state.default === "A" ? "B" : "A", trial: "" });
        } else {
          assert.deepEqual(done, FROM_V1);
          const esp = await espFiles(device.esp);
          for (const [name, content] of Object.entries(FIRMWARE.new)) assert.equal(esp.get(name), content);
          for (const name of Object.keys(FIRMWARE.stale)) assert.equal(esp.has(name), false, `${name} gone`);
          assert.equal(esp.get(GRUBENV), before.esp.get(GRUBENV), "--firmware never writes boot control");
        }
        assert.deepEqual(await leftovers(device), [], "nothing of the killed run is left behind");
      } finally {
        await rm(device.root, { recursive: true, force: true });
      }
    });
  }
});
