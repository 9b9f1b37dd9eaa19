/**
 * The AB image that `eos build` makes from images/default.yaml boots under
 * OVMF (TCG here) to multi-user, from slot A, with a read-only squashfs
 * root under a tmpfs overlay, the description's identity and the boot
 * control block of docs/boot-control.md.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { decodeGrubenv } from "../../src/core/update/grubenv.ts";
import { ROOT_CLONE_LABEL, ROOT_LABEL } from "../../src/core/manifest.ts";
import type { Vm } from "../../src/io/machine/qemu.ts";
import { BOOT_TIMEOUT_MS, readImageGrubenv, startTestVm } from "../helpers/vm.ts";
import { runEspDurabilityProbe } from "../helpers/esp-durability.ts";
import { testImage, VM_TEST_IMAGE, vmSkipReason, type TestImage } from "../helpers/vm-image.ts";
import { LOGIN_PROMPT } from "../../src/core/machine/qemu-machine.ts";

const skip = vmSkipReason();
if (skip) process.stdout.write(`# vm tier skipped: ${skip}\n`);

describe("the default AB image boots", { skip, timeout: 40 * 60_000 }, () => {
  let image: TestImage;
  let vm: Vm;
  let bootSeconds = 0;

  before(async () => {
    const t0 = performance.now();
    image = await testImage(VM_TEST_IMAGE);
    process.stdout.write(
      `# image ${image.raw} (${image.cached ? "cached" : `built in ${((performance.now() - t0) / 1000).toFixed(0)} s`})\n`,
    );
    vm = await startTestVm(undefined, image);
    await vm.waitForConsole(LOGIN_PROMPT, { timeoutMs: BOOT_TIMEOUT_MS });
    await vm.waitForSsh({ timeoutMs: 3 * 60_000 });
    const state = (
      await vm.ssh(["systemctl", "is-system-running", "--wait"], { timeoutMs: 180_000 })
    ).stdout.trim();
    bootSeconds = vm.uptime();
    process.stdout.write(
      `# ${vm.accel}: login prompt and SSH after ${bootSeconds.toFixed(1)} s (system ${state})\n`,
    );
  });

  after(async () => {
    if (!vm) return;
    if (process.env.EOS_VM_KEEP) process.stdout.write(`# console log ${vm.consoleLog}\n`);
    await vm.kill();
  });

  it("reaches multi-user.target with no failed unit", async () => {
    assert.equal((await vm.sshOk(["systemctl", "is-active", "multi-user.target"])).trim(), "active");
    const failed = await vm.sshOk(["systemctl", "--failed", "--no-legend", "--plain"]);
    assert.equal(failed.trim(), "", `failed units:\n${failed}`);
    const t = await vm.sshOk([
      "systemctl",
      "show",
      "-P",
      "ActiveEnterTimestampMonotonic",
      "multi-user.target",
    ]);
    process.stdout.write(`# multi-user.target ${(Number(t) / 1e6).toFixed(1)} s after the kernel started\n`);
  });

  it("made one SSH host key at this boot, Ed25519, and sshd serves only that one", async () => {
    const keys = await vm.sshOk(["sh", "-c", "ls /etc/ssh/ssh_host_*"]);
    assert.deepEqual(keys.trim().split("\n"), [
      "/etc/ssh/ssh_host_ed25519_key",
      "/etc/ssh/ssh_host_ed25519_key.pub",
    ]);
    const served = (await vm.sshOk(["sshd", "-T"])).split("\n").filter((l) => l.startsWith("hostkey "));
    assert.deepEqual(served, ["hostkey /etc/ssh/ssh_host_ed25519_key"]);
    // Made in the tmpfs overlay, not shipped in the read-only slot.
    assert.equal((await vm.ssh(["test", "-e", "/media/root-ro/etc/ssh/ssh_host_ed25519_key"])).code, 1);
  });

  it("runs the initramfs scripts without a missing command", async () => {
    // The initramfs has klibc's tools and no busybox: a script calling grep printed "not found"
    // and skipped what it guarded. (The serial console can drop bytes under TCG: a lost line
    // could hide a failure here, never invent one.)
    const log = await readFile(vm.consoleLog, "utf8");
    assert.doesNotMatch(log, /\/scripts\/[\w/-]+: (line )?\d+: \S+: not found/);
  });

  it("boots slot A with the command line of the contract", async () => {
    const cmdline = (await vm.sshOk(["cat", "/proc/cmdline"])).trim().split(/\s+/);
    const env = await readImageGrubenv(image.raw);
    assert.ok(cmdline.includes(`root=PARTUUID=${env.get("eos_A_uuid")}`), cmdline.join(" "));
    assert.ok(cmdline.includes("eos.slot=A"));
    assert.ok(cmdline.includes("panic=10"));
    assert.ok(cmdline.includes("console=ttyS0"));
    assert.ok(!cmdline.includes("COMMIT_UPDATE"));
  });

  it("runs on a read-only squashfs from p.lxreadonly under a tmpfs overlay", async () => {
    const root = (await vm.sshOk(["findmnt", "-n", "-o", "FSTYPE", "/"])).trim();
    assert.equal(root, "overlay");
    const [source, fstype, options] = (
      await vm.sshOk(["findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "/media/root-ro"])
    )
      .trim()
      .split(/\s+/);
    assert.equal(fstype, "squashfs");
    assert.match(options ?? "", /(^|,)ro(,|$)/);
    const slotA = (await vm.sshOk(["readlink", "-f", `/dev/disk/by-partlabel/${ROOT_LABEL}`])).trim();
    // The slot is mounted through its dm-verity mapping (checked in the next test).
    assert.equal(source, "/dev/mapper/eos-root");
    assert.match(
      await vm.sshOk(["veritysetup", "status", "eos-root"]),
      new RegExp(`data device:\\s+${slotA}$`, "m"),
    );
    assert.equal((await vm.sshOk(["findmnt", "-n", "-o", "FSTYPE", "/media/root-rw"])).trim(), "tmpfs");
    // Slot B exists, same size, and is not mounted.
    const sizes = await vm.sshOk([
      "blockdev",
      "--getsize64",
      `/dev/disk/by-partlabel/${ROOT_LABEL}`,
      `/dev/disk/by-partlabel/${ROOT_CLONE_LABEL}`,
    ]);
    const [a, b] = sizes.trim().split(/\s+/);
    assert.equal(a, b);
    // The slot is not writable; /etc and /var are (tmpfs).
    const ro = await vm.ssh(["touch", "/media/root-ro/eos-test"]);
    assert.notEqual(ro.code, 0);
    await vm.sshOk(["sh", "-c", "echo hello > /etc/eos-test && cat /etc/eos-test && touch /var/eos-test"]);
    assert.equal((await vm.sshOk(["findmnt", "-n", "-o", "SOURCE", "/boot/efi"])).trim().length > 0, true);
  });

  it("carries the kernel and initrd in the slot, where os-update kexecs them from", async () => {
    await vm.sshOk(["test", "-s", "/media/root-ro/boot/vmlinuz"]);
    await vm.sshOk(["test", "-s", "/media/root-ro/boot/initrd.img"]);
    const modules = await vm.sshOk([
      "sh",
      "-c",
      "lsinitramfs /boot/initrd.img | grep -E 'squashfs.ko|eos-overlay'",
    ]);
    assert.match(modules, /squashfs\.ko/);
    assert.match(modules, /init-bottom\/eos-overlay/);
  });

  it("has the description's identity and update configuration", async () => {
    const osRelease = await vm.sshOk(["cat", "/etc/os-release"]);
    assert.match(osRelease, /^VERSION="1\.0\.0-test"$/m);
    assert.match(osRelease, /^ID=eos$/m);
    const conf = await vm.sshOk(["cat", "/etc/os-update.yml"]);
    assert.match(conf, /^update:$/m);
    assert.match(conf, /^ {2}name: "EOS"$/m);
    assert.match(conf, /^ {2}url: "http:\/\/10\.0\.2\.2:8080"$/m);
    const keyPath = /^ {4}- "(\/usr\/share\/eos\/keys\/[^"]+)"$/m.exec(conf)?.[1];
    assert.ok(keyPath, conf);
    const pub = await vm.sshOk(["cat", keyPath]);
    assert.equal(pub.trim(), (await readFile(image.releasePub, "utf8")).trim());
    assert.match(await vm.sshOk(["/usr/lib/eos/node", "--version"]), /^v\d+\./);
  });

  it("has update_commit.service: os-update --commit after multi-user, which confirmed this boot for GRUB", async () => {
    const unit = await vm.sshOk(["systemctl", "cat", "update_commit.service"]);
    assert.match(unit, /^ExecStart=\/usr\/bin\/os-update --commit$/m);
    assert.match(unit, /^After=multi-user\.target$/m);
    assert.equal((await vm.sshOk(["systemctl", "is-enabled", "update_commit.service"])).trim(), "enabled");
    // GRUB counted this boot of the committed slot (eos_unconfirmed=1); the unit confirmed it.
    for (let i = 0; i < 60; i++) {
      const state = (await vm.ssh(["systemctl", "is-active", "update_commit.service"])).stdout.trim();
      if (state !== "activating" && state !== "inactive") break;
      await new Promise((r) => setTimeout(r, 1000));
    }
    assert.equal((await vm.ssh(["systemctl", "is-active", "update_commit.service"])).stdout.trim(), "active");
    const env = await vm.sshOk(["cat", "/boot/efi/EFI/BOOT/grubenv"]);
    assert.match(env, /^eos_unconfirmed=$/m);
    assert.match(await vm.sshOk(["journalctl", "-b", "-u", "update_commit.service"]), /boot confirmed/);
  });

  it("runs its root slot under dm-verity with the root hash GRUB passed", async () => {
    const cmdline = await vm.sshOk(["cat", "/proc/cmdline"]);
    const verity = / eos\.verity=([0-9a-f]{64}):(\d+) /.exec(cmdline);
    assert.ok(verity, cmdline);
    const manifest = JSON.parse(await readFile(`${image.raw}.manifest.json`, "utf8")) as {
      partitions: { root: { verity: { root_hash: string; data_blocks: number } } };
    };
    assert.equal(verity[1], manifest.partitions.root.verity.root_hash);
    assert.equal(Number(verity[2]), manifest.partitions.root.verity.data_blocks);
    const status = await vm.sshOk(["veritysetup", "status", "eos-root"]);
    assert.match(status, /status:\s+verified/);
    assert.match(status, new RegExp(`root hash:\\s+${verity[1]}`));
  });

  it("keeps the boot control block of the contract on the ESP, untouched by a normal boot", async () => {
    const block = Buffer.from(await vm.sshOk(["base64", "-w0", "/boot/efi/EFI/BOOT/grubenv"]), "base64");
    const vars = decodeGrubenv(block, "guest grubenv");
    assert.equal(vars.get("eos_default"), "A");
    assert.equal(vars.get("eos_trial"), "");
    assert.equal(vars.get("eos_tries"), "0");
    const partA = (await vm.sshOk(["cat", `/sys/class/block/${"vda2"}/partition`])).trim();
    assert.equal(vars.get("eos_A_part"), `gpt${partA}`);
    assert.equal(vars.get("eos_B_part"), "gpt3");
    const uuids = await vm.sshOk(["blkid", "-s", "PARTUUID", "-o", "value", "/dev/vda2", "/dev/vda3"]);
    assert.deepEqual(uuids.trim().split(/\s+/), [vars.get("eos_A_uuid"), vars.get("eos_B_uuid")]);
    assert.match(vars.get("eos_cmdline") ?? "", /console=ttyS0/);
    // Slot A's record is the manifest's root: os-update reads the running version from it.
    const manifest = JSON.parse(await readFile(`${image.raw}.manifest.json`, "utf8")) as {
      version: string;
      partitions: { root: { sha256: string; size: number } };
    };
    assert.equal(vars.get("eos_A_version"), manifest.version);
    assert.equal(vars.get("eos_A_sha256"), manifest.partitions.root.sha256);
    assert.equal(vars.get("eos_A_size"), String(manifest.partitions.root.size));
    assert.equal(vars.get("eos_B_sha256"), "");
  });

  it("writes the boot control block so that a power cut right after the write keeps it: FAT clean, new block on disk", async () => {
    // The guest's own vfat on a loop device (its backing file holds what vfat sent to the disk);
    // writeBootControl as os-update calls it. A power cut after it returns must find the new
    // block and a FAT that fsck.fat calls clean (no entry on a freed cluster).
    const rounds = await runEspDurabilityProbe(vm, 6);
    assert.equal(rounds.length, 6);
    for (const r of rounds) {
      assert.equal(r.onDisk, r.wrote, `round ${r.round}: the block on disk after the write`);
      assert.ok(r.fsckClean, `round ${r.round}: fsck.fat -n after the write: ${r.fsck}`);
    }
  });

  it("powers off cleanly", async () => {
    assert.equal(await vm.powerOff({ timeoutMs: 120_000 }), 0);
  });
});
