/**
 * The proof of the update cycle: what `eos demo` does (build v1 and v2,
 * serve v2, boot v1, check, apply with kexec into slot B, commit, roll back
 * with a reboot), asserted from inside the guest at each state, then a power
 * cut in the middle of --apply, one in the middle of --firmware, and one in
 * the middle of the commit's write of the boot control block.
 */
import { consoleContext } from "../helpers/context.ts";
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { gunzipSync } from "node:zlib";
import { copyFile, mkdir, rm, writeFile } from "node:fs/promises";
import { runDemo, type DemoResult } from "../../src/io/demo.ts";
import { guestState, waitForCommit, type GuestState } from "../../src/io/demo-guest.ts";
import { DEMO_REPORTS } from "../../src/io/demo-server.ts";
import { FIRMWARE_LABEL, ROOT_CLONE_LABEL, ROOT_LABEL } from "../../src/core/manifest.ts";
import { Vm } from "../../src/io/machine/qemu.ts";
import { demoTestOptions, vmSkipReason } from "../helpers/vm-image.ts";
import { fsckFat } from "../helpers/fat.ts";
import {
  BOOT_TIMEOUT_MS,
  editImageGrubenv,
  partitionByLabel,
  readImageGrubenv,
  readPartition,
  writePartition,
} from "../helpers/vm.ts";
import { LOGIN_PROMPT } from "../../src/core/machine/qemu-machine.ts";

const skip = vmSkipReason();
if (skip) process.stdout.write(`# vm tier skipped: ${skip}\n`);

const ctx = consoleContext();

describe("update cycle in a real VM (the demo, asserted)", { skip, timeout: 75 * 60_000 }, () => {
  let demo: DemoResult;
  const workDir = demoTestOptions(() => {}).workDir;

  before(async () => {
    demo = await runDemo(ctx, {
      ...demoTestOptions((line) => process.stdout.write(`# ${line}\n`)),
      keepVm: true,
    });
  });
  after(async () => {
    await demo?.vm?.kill();
    await demo?.close();
  });

  const flatten = (qcow2: string, raw: string) => {
    const r = spawnSync("qemu-img", ["convert", "-O", "raw", qcow2, raw]);
    assert.equal(r.status, 0, r.stderr.toString());
  };

  const expectState = (
    s: GuestState,
    want: { version: string; slot: string; def: string; check: number },
  ) => {
    assert.equal(s.version, want.version, "VERSION in /etc/os-release");
    assert.equal(s.slot, want.slot, `slot on the kernel command line: ${s.cmdline}`);
    assert.equal(s.grubenv.eos_default, want.def, "default slot in the boot control block");
    assert.equal(s.grubenv.eos_trial, "", "nothing on trial");
    assert.equal(s.checkExit, want.check, "os-update --check exit code");
  };

  it("v1 boots from slot A and sees v2 on offer (--check exits 1)", () => {
    expectState(demo.states.booted, { version: "1.0.0", slot: "A", def: "A", check: 1 });
    assert.doesNotMatch(demo.states.booted.cmdline, /COMMIT_UPDATE/);
  });

  it("--apply kexecs into slot B with COMMIT_UPDATE; update_commit.service makes B the default", () => {
    const s = demo.states.updated;
    expectState(s, { version: "2.0.0", slot: "B", def: "B", check: 0 });
    assert.match(s.cmdline, /COMMIT_UPDATE/);
    assert.equal(s.grubenv.eos_B_version, "2.0.0");
    assert.equal(s.grubenv.eos_B_sha256, demo.v2.rootSha256);
    assert.match(demo.steps.find((st) => st.name.startsWith("update_commit"))?.detail ?? "", /tree present/);
    // Reproducible builds make v1 → v2 a small delta; the apply took it, not the whole slot.
    const applied = demo.steps.find((st) => st.name.includes("os-update --apply"))?.detail ?? "";
    const m = /from (\d+) bytes downloaded \(delta\)/.exec(applied);
    assert.ok(m, `the apply took the delta path: ${applied}`);
    assert.ok(Number(m[1]) < demo.v2.rootFsBytes / 10, `the delta is small: ${applied}`);
  });

  it("--rollback --reboot brings v1 back through GRUB, and v2 is offered again", () => {
    const s = demo.states.rolledBack;
    assert.ok(s, "the demo went through the rollback");
    expectState(s, { version: "1.0.0", slot: "A", def: "A", check: 1 });
    assert.doesNotMatch(s.cmdline, /COMMIT_UPDATE/);
  });

  it("the device reported each step of the demo to the server, in order", () => {
    const firsts = DEMO_REPORTS.map((type) => demo.reports.indexOf(type));
    assert.ok(
      firsts.every((at, i) => at >= 0 && (i === 0 || at > (firsts[i - 1] as number))),
      `reported: ${demo.reports.join(" ")}; wanted, in this order: ${DEMO_REPORTS.join(" ")}`,
    );
    assert.ok(!demo.reports.includes("failed"), demo.reports.join(" "));
  });

  it("a power cut in the middle of --apply leaves v1 booting normally and --check still offering v2", async () => {
    const vm = demo.vm as Vm;
    await vm.sshOk(["sh", "-c", "setsid -f os-update --apply --no-delta >/run/apply.log 2>&1 </dev/null"]);
    // Wait until slot B has been invalidated (writing has begun), then let it write for a while.
    const deadline = performance.now() + 5 * 60_000;
    for (;;) {
      const env = await vm.sshOk(["cat", "/boot/efi/EFI/BOOT/grubenv"]);
      if (/^eos_B_sha256=$/m.test(env)) break;
      assert.ok(performance.now() < deadline, "os-update --apply never started writing");
      await new Promise((r) => setTimeout(r, 1000));
    }
    await new Promise((r) => setTimeout(r, 4000));
    const log = await vm.ssh(["cat", "/run/apply.log"]);
    assert.doesNotMatch(
      log.stdout,
      /marked for \d trial boots/,
      "the apply must still be writing when the power goes",
    );
    // The power goes: an immediate reset without sync (the guest's page cache is lost) ends QEMU
    // (-no-reboot), which keeps what reached the disk, as a disk does. Not SIGKILL to QEMU: with
    // cache=unsafe that loses QEMU's own qcow2 mapping updates too, and the overlay then mixes
    // old and new blocks as no disk would (a FAT that fsck.fat and mtools refuse).
    await vm.ssh(["sh", "-c", "echo 1 >/proc/sys/kernel/sysrq; echo b >/proc/sysrq-trigger"], {
      timeoutMs: 20_000,
      connectTimeout: 5,
    });
    await vm.waitForExit({ timeoutMs: 60_000, what: "the power cut (sysrq b)" });
    // The ESP as the cut left it: a FAT that fsck.fat finds clean but for the dirty flag (this
    // --apply rewrote its boot control block before the cut).
    const cutDir = join(workDir, "apply-cut");
    await rm(cutDir, { recursive: true, force: true });
    await mkdir(cutDir, { recursive: true });
    flatten(join(workDir, "vm/disk.qcow2"), join(cutDir, "after-cut.raw"));
    await writeFile(
      join(cutDir, "esp.fat"),
      await readPartition(join(cutDir, "after-cut.raw"), FIRMWARE_LABEL),
    );
    const fsck = fsckFat(join(cutDir, "esp.fat"));
    assert.ok(fsck.clean, `the ESP after the cut, beyond its dirty flag: ${fsck.report}`);
    await rm(cutDir, { recursive: true, force: true });

    const again = await Vm.start({
      image: demo.v1.raw,
      workDir: join(workDir, "vm"),
      reuseDisk: true,
      sshKey: join(workDir, "keys/id_ed25519"),
      registryDiskBytes: 0,
    });
    demo.vm = again;
    await again.waitForConsole(LOGIN_PROMPT, { timeoutMs: 8 * 60_000 });
    await again.waitForSsh({ timeoutMs: 3 * 60_000 });
    // As the seed ships it: through the `fleet` flake (podman, the image's read-only store), not the copy.
    const getkey = await again.ssh(["fleet", "--getkey"], { timeoutMs: 300_000 });
    assert.equal(getkey.code, 0, getkey.stderr);
    assert.doesNotMatch(getkey.stderr, /copying directly/, "the fleet flake ran");
    const env = await again.sshOk(["cat", "/boot/efi/EFI/BOOT/grubenv"]);
    assert.match(env, /^eos_default=A$/m);
    assert.match(env, /^eos_trial=$/m);
    assert.equal((await again.sshOk(["sh", "-c", ". /etc/os-release; echo $VERSION"])).trim(), "1.0.0");
    assert.match(await again.sshOk(["cat", "/proc/cmdline"]), /eos\.slot=A/);
    const check = await again.ssh(["os-update", "--check"], { timeoutMs: 300_000 });
    assert.equal(check.code, 1, check.stderr);
    assert.match(check.stdout, /update available: 1.0.0 → 2.0.0/);
  });

  it("a power cut in the middle of --firmware leaves an ESP that boots, and the next --firmware finishes", async () => {
    const vm = demo.vm as Vm;
    // x86_64's firmware has nothing outside EFI/ (which --firmware never touches), so the
    // writes to cut are the removals: two files that v2's firmware does not have, flushed.
    const stale = ["fw-stale-1.bin", "fw-stale-2.bin"];
    await vm.sshOk([
      "sh",
      "-c",
      'for f in "$@"; do head -c 65536 /dev/urandom >/boot/efi/$f; done; sync',
      "sh",
      ...stale,
    ]);
    const bootId = async () => (await vm.sshOk(["cat", "/proc/sys/kernel/random/boot_id"])).trim();
    const before = await bootId();
    // The power goes after the first removal and before the second (sysrq reset, no sync);
    // this QEMU reboots the guest, as a power cycle would.
    await vm.sshOk([
      "sh",
      "-c",
      "setsid -f env EOS_TEST_CRASH_AT=firmware:removed-partly EOS_TEST_CRASH_MODE=power os-update --firmware >/dev/null 2>&1 </dev/null",
    ]);
    const deadline = performance.now() + BOOT_TIMEOUT_MS;
    for (;;) {
      const r = await vm.ssh(["cat", "/proc/sys/kernel/random/boot_id"], {
        timeoutMs: 20_000,
        connectTimeout: 5,
      });
      if (r.code === 0 && r.stdout.trim() !== before) break;
      assert.ok(performance.now() < deadline, "the guest never came back after the cut in --firmware");
      await new Promise((res) => setTimeout(res, 2000));
    }
    assert.notEqual(await bootId(), before, "the cut rebooted the guest");
    await vm.sshOk(["fleet", "--getkey"]);
    expectState(await guestState(vm), { version: "1.0.0", slot: "A", def: "A", check: 1 });
    // The first removal may or may not have reached the disk; the second never ran.
    const left = (await vm.sshOk(["ls", "/boot/efi"])).split(/\s+/).filter((f) => stale.includes(f));
    assert.ok(left.length >= 1, `the cut came before the second removal: ${left.join(" ")}`);
    // The ESP as the rebooted guest sees it: fsck.fat finds it clean but for the dirty flag.
    const espGz = await vm.sshOk(
      ["sh", "-c", `gzip -1 -c /dev/disk/by-partlabel/${FIRMWARE_LABEL} | base64 -w0`],
      {
        timeoutMs: 300_000,
      },
    );
    const espFile = join(workDir, "firmware-cut-esp.fat");
    await writeFile(espFile, gunzipSync(Buffer.from(espGz, "base64")));
    const fsck = fsckFat(espFile);
    await rm(espFile, { force: true });
    assert.ok(fsck.clean, `the ESP after the cut in --firmware, beyond its dirty flag: ${fsck.report}`);
    // The next --firmware finishes what the cut left.
    const again = await vm.sshOk(["os-update", "--firmware"], { timeoutMs: 300_000 });
    assert.match(again, new RegExp(`0 files written, ${left.length} removed; EFI/ kept`));
    assert.deepEqual((await vm.sshOk(["ls", "/boot/efi"])).split(/\s+/).filter(Boolean), ["EFI"]);
  });

  it("a power cut during the commit's write of the boot control block keeps the trial, and the next boot commits", async () => {
    // v1's disk as shipped: slot B gets v2 as --apply writes it, on trial, and
    // update_commit.service gets a power cut (sysrq reset: the guest's page cache is lost; QEMU
    // ends on the reset and keeps what reached the disk) between the flushed temp block and its
    // rename. Not the last test's disk, so that this test stands on its own.
    assert.equal(await demo.vm?.powerOff({ timeoutMs: 180_000 }), 0, "clean power-off");
    const dir = join(workDir, "commit-cut");
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
    const disk = join(dir, "before.raw");
    await copyFile(demo.v1.raw, disk);
    await writePartition(disk, ROOT_CLONE_LABEL, await readPartition(demo.v2.raw, ROOT_LABEL));
    const v2env = await readImageGrubenv(demo.v2.raw);
    const shipped = await readImageGrubenv(disk);
    const cmdline = shipped.get("eos_cmdline") ?? "";
    const crash =
      "systemd.setenv=EOS_TEST_CRASH_AT=commit:before-rename systemd.setenv=EOS_TEST_CRASH_MODE=power";
    await editImageGrubenv(disk, {
      eos_B_version: "2.0.0",
      eos_B_sha256: v2env.get("eos_A_sha256") ?? "",
      eos_B_size: v2env.get("eos_A_size") ?? "",
      eos_B_verity: v2env.get("eos_A_verity") ?? "",
      eos_trial: "B",
      eos_tries: "3",
      eos_cmdline: `${cmdline} ${crash}`.trim(),
    });
    const sshKey = join(workDir, "keys/id_ed25519");
    const cut = await Vm.start({
      image: disk,
      workDir: join(dir, "vm1"),
      sshKey,
      registryDiskBytes: 0,
      noReboot: true,
    });
    let code: number | null;
    try {
      await cut.waitForConsole(/EOS: booting slot B .*COMMIT_UPDATE/, { timeoutMs: BOOT_TIMEOUT_MS });
      code = await cut.waitForExit({
        timeoutMs: BOOT_TIMEOUT_MS,
        what: "the commit never reached its crash point",
      });
    } finally {
      await cut.kill();
    }
    assert.equal(code, 0, "QEMU ended because the guest reset (-no-reboot), not by a kill");

    // On the disk as the cut left it: GRUB's count of the trial boot, the old block, the flushed temp block.
    const afterCut = join(dir, "after-cut.raw");
    flatten(join(dir, "vm1/disk.qcow2"), afterCut);
    const env = await readImageGrubenv(afterCut);
    assert.equal(env.get("eos_default"), "A", "the commit never landed");
    assert.equal(env.get("eos_trial"), "B", "B is still on trial");
    assert.equal(env.get("eos_tries"), "2", "GRUB counted the cut boot");
    const esp = await partitionByLabel(afterCut, FIRMWARE_LABEL);
    const listing = spawnSync("mdir", ["-b", "-i", `${afterCut}@@${esp.offset}`, "::EFI/BOOT"], {
      env: { ...process.env, MTOOLS_SKIP_CHECK: "1" },
    }).stdout.toString();
    assert.match(listing, /\.grubenv\.tmp-/, `the cut came after the temp block was flushed: ${listing}`);

    // The next boot, without the crash point: B on trial again, commits, and cleans up.
    await editImageGrubenv(afterCut, { eos_cmdline: cmdline });
    const vm = await Vm.start({ image: afterCut, workDir: join(dir, "vm2"), sshKey, registryDiskBytes: 0 });
    demo.vm = vm;
    await vm.waitForSsh({ timeoutMs: BOOT_TIMEOUT_MS });
    await vm.sshOk(["fleet", "--getkey"]);
    assert.equal(await waitForCommit(vm, 5 * 60_000), "active (success)");
    const s = await guestState(vm);
    expectState(s, { version: "2.0.0", slot: "B", def: "B", check: 0 });
    assert.match(s.cmdline, /COMMIT_UPDATE/, "the second boot was still the trial");
    assert.doesNotMatch(s.cmdline, /EOS_TEST_CRASH/);
    assert.doesNotMatch(
      await vm.sshOk(["ls", "-a", "/boot/efi/EFI/BOOT"]),
      /\.tmp-/,
      "the stale temp block is gone",
    );
  });
});
