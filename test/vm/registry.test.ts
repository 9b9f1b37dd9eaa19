/**
 * The flake registry in QEMU with swtpm (issue 7's proof), on one image and
 * four boots (three machines' worth of disk state) of the same disk:
 *  1. first boot: registry-rw.service grows p.spare to fill the disk, sets it
 *     up (LUKS2, key sealed in this VM's TPM, XFS labelled INSTANCE) and
 *     mounts it at /var/lib/containers/storage; a container flake is
 *     registered (image imported locally) and data written. The first
 *     set-up is killed half-way (a crash point, after luksFormat and the
 *     token, before the file system) and the unit's next run starts over.
 *     Then the XFS superblock is damaged on purpose;
 *  2. reboot: the mount fails, the unit reports why, the system is up, the
 *     damaged bytes are exactly as left (no xfs_repair, no mkfs); restored by
 *     the test, `flake-registry --activate` brings the flake and data back;
 *  3. os-update switches to slot B, which holds the test image with a newer
 *     basesystem (what an OS update writes there), and reboots: the boot
 *     unit opens the registry with the TPM's key, the flake and the data
 *     are there, and the delta flake runs on the new base;
 *  4. the same disk in another VM (fresh swtpm state): the key does not
 *     unseal, the registry stays closed and its LUKS header unchanged. That
 *     VM is started the way a user starts one, `eos run --headless --tpm`:
 *     its swtpm is fresh, the guest sees TPM 2.0, SSH is forwarded to the
 *     chosen port, and after the guest powers off eos run exits 0 with the
 *     disk file untouched.
 * Boots are shared between steps because each TCG boot costs minutes of CI.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, stat, symlink, copyFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Vm } from "../../src/io/machine/qemu.ts";
import {
  BOOT_TIMEOUT_MS,
  copyImage,
  editImageGrubenv,
  readImageGrubenv,
  readPartition,
  startTestVm,
  writePartition,
} from "../helpers/vm.ts";
import {
  NEWER_BASE_PACKAGE,
  VM_TMP,
  testImage,
  VM_TEST_IMAGE,
  VM_TEST_IMAGE_NEWER_BASE,
  vmSkipReason,
  type TestImage,
} from "../helpers/vm-image.ts";
import { sha256File, startEosRun } from "../helpers/eos-run.ts";
import { parseImageDescription } from "../../src/core/image/description.ts";

/** The Debian release basesystem is built from: /etc/debian_version's major in the container. */
async function debianMajor(description: string): Promise<number> {
  const { suite } = parseImageDescription(await readFile(description, "utf8"), description).distribution;
  return { bookworm: 12, trixie: 13 }[suite];
}

const GiB = 1024 ** 3;
const MOUNT = "/var/lib/containers/storage";
const FLAKE = "/usr/share/flakes/bin/bb";
const LYNX = "/usr/share/flakes/bin/lynx";

let skip = vmSkipReason();
if (!skip && spawnSync("sh", ["-c", "command -v swtpm"]).status !== 0) skip = "swtpm is not installed";
if (!skip && !existsSync("/bin/busybox")) skip = "needs /bin/busybox (busybox-static) for the test container";
if (skip) process.stdout.write(`# vm tier (registry) skipped: ${skip}\n`);

/** A busybox root file system as a tar (podman import reads it on stdin in the guest). */
async function busyboxTar(dir: string): Promise<Buffer> {
  const root = join(dir, "bbroot");
  await mkdir(join(root, "bin"), { recursive: true });
  await copyFile("/bin/busybox", join(root, "bin/busybox"));
  await symlink("busybox", join(root, "bin/sh"));
  const r = spawnSync("tar", ["-C", root, "--owner=0", "--group=0", "-cf", "-", "."], {
    maxBuffer: 64 * 1024 * 1024,
  });
  if (r.status !== 0) throw new Error(`tar: ${r.stderr.toString()}`);
  return r.stdout;
}

/**
 * The seed's lynx as a delta container: one script, no shell of its own; it
 * runs only on a base, and says which one (the newer basesystem has `hello`).
 */
async function lynxDeltaTar(dir: string): Promise<Buffer> {
  const root = join(dir, "lynxroot");
  await mkdir(join(root, "usr/bin"), { recursive: true });
  await writeFile(
    join(root, "usr/bin/lynx"),
    `#!/bin/sh\ngreeting=$(${NEWER_BASE_PACKAGE} 2>/dev/null) || greeting="no ${NEWER_BASE_PACKAGE}"\necho "lynx $* on debian $(cat /etc/debian_version): $greeting"\n`,
    {
      mode: 0o755,
    },
  );
  const r = spawnSync("tar", ["-C", root, "--owner=0", "--group=0", "-cf", "-", "."]);
  if (r.status !== 0) throw new Error(`tar: ${r.stderr.toString()}`);
  return r.stdout;
}

describe("the flake registry on p.spare (QEMU + swtpm)", { skip, timeout: 40 * 60_000 }, () => {
  let image: TestImage;
  let newer: TestImage;
  let work: string;
  let vm: Vm | undefined;
  let diskBytes = 0;
  const timings: string[] = [];

  const boot = async (
    label: string,
    options: { reuseDisk?: boolean; workDir?: string; raw?: string } = {},
  ) => {
    const t0 = performance.now();
    vm = await startTestVm(undefined, image, {
      tpm: true,
      diskBytes,
      workDir: options.workDir ?? work,
      reuseDisk: options.reuseDisk ?? true,
      ...(options.raw ? { raw: options.raw } : {}),
    });
    await vm.waitForSsh({ timeoutMs: BOOT_TIMEOUT_MS });
    await vm.ssh(["systemctl", "is-system-running", "--wait"], { timeoutMs: 240_000 });
    const s = (performance.now() - t0) / 1000;
    timings.push(`${label} ${s.toFixed(0)} s`);
    process.stdout.write(`# ${label}: up after ${s.toFixed(1)} s (${vm.accel})\n`);
    return vm;
  };
  const down = async () => {
    if (!vm) return;
    assert.equal(await vm.powerOff({ timeoutMs: 120_000 }), 0, "clean power-off");
    vm = undefined;
  };
  const journal = async (v: Vm) => v.sshOk(["journalctl", "-b", "-o", "cat", "-u", "registry-rw.service"]);

  before(async () => {
    const t0 = performance.now();
    image = await testImage(VM_TEST_IMAGE);
    newer = await testImage(VM_TEST_IMAGE_NEWER_BASE);
    process.stdout.write(
      `# image ${image.raw} (${image.cached ? "cached" : `built in ${((performance.now() - t0) / 1000).toFixed(0)} s`})\n`,
    );
    await mkdir(join(VM_TMP, "run"), { recursive: true });
    work = await mkdtemp(join(VM_TMP, "run", "registry-"));
    diskBytes = (await stat(image.raw)).size + 1 * GiB;
  });

  after(async () => {
    await vm?.kill();
    process.stdout.write(`# boots: ${timings.join(", ")}\n`);
    if (process.env.EOS_VM_KEEP) process.stdout.write(`# kept ${work}\n`);
    else if (work) await rm(work, { recursive: true, force: true });
  });

  it("first boot: p.spare grown, LUKS2 with the key sealed in the TPM, XFS INSTANCE mounted", async () => {
    // The first set-up dies after luksFormat and the token import (every boot's unit gets the
    // crash point; only a set-up reaches it).
    const raw = await copyImage(image.raw, work, "first-boot.raw");
    // Slot B holds the newer basesystem's root from the start (step 3 switches to it): no boot
    // before then writes that slot, so the VM's disk overlay shows it as written here.
    await writePartition(raw, "p.lxrootclone1", await readPartition(newer.raw, "p.lxreadonly"));
    const cmdline = (await readImageGrubenv(raw)).get("eos_cmdline") ?? "";
    await editImageGrubenv(raw, {
      eos_cmdline: `${cmdline} systemd.setenv=EOS_TEST_CRASH_AT=registry:token`.trim(),
    });
    const v = await boot("first boot", { reuseDisk: false, raw });
    assert.equal((await v.ssh(["systemctl", "is-failed", "registry-rw.service"])).stdout.trim(), "failed");
    assert.equal(
      (await v.sshOk(["blkid", "-p", "-s", "LABEL", "-o", "value", "/dev/disk/by-partlabel/p.spare"])).trim(),
      "eos-setup-incomplete",
      "the killed set-up left its LUKS header marked as unfinished",
    );
    // The kernel command line's systemd.setenv stays in the manager's environment
    // (unset-environment does not reach it); a variable set over it wins.
    await v.sshOk(["systemctl", "set-environment", "EOS_TEST_CRASH_AT=none"]);
    await v.sshOk(["systemctl", "restart", "registry-rw.service"]);
    assert.equal((await v.sshOk(["systemctl", "is-active", "registry-rw.service"])).trim(), "active");
    const log = await journal(v);
    assert.match(log, /blank: first boot, setting up the registry/);
    assert.match(log, /p\.spare: its set-up was cut short \(a LUKS2 header labelled eos-setup-incomplete/);
    assert.equal(
      (await v.sshOk(["blkid", "-p", "-s", "LABEL", "-o", "value", "/dev/disk/by-partlabel/p.spare"])).trim(),
      "",
      "a finished set-up clears the mark",
    );
    assert.match(log, /p\.spare: grown from 64 MiB to \d+ MiB/);
    const [source, fstype] = (await v.sshOk(["findmnt", "-n", "-o", "SOURCE,FSTYPE", MOUNT]))
      .trim()
      .split(/\s+/);
    assert.equal(source, "/dev/mapper/luksInstances");
    assert.equal(fstype, "xfs");
    assert.equal(
      (await v.sshOk(["blkid", "-s", "LABEL", "-o", "value", "/dev/mapper/luksInstances"])).trim(),
      "INSTANCE",
    );
    const dump = await v.sshOk(["cryptsetup", "luksDump", "/dev/disk/by-partlabel/p.spare"]);
    assert.match(dump, /^Version:\s+2$/m);
    assert.match(dump, /^\s+0: eos-tpm2$/m);
    // The key is nowhere on the disk or in /run: only the sealed blob in the header.
    assert.equal((await v.ssh(["sh", "-c", "ls /run/eos-registry | grep -v boot-report"])).stdout.trim(), "");
    const size = Number(
      (await v.sshOk(["blockdev", "--getsize64", "/dev/disk/by-partlabel/p.spare"])).trim(),
    );
    assert.ok(size > 1 * GiB, `p.spare is ${size} bytes`);
    const status = await v.sshOk(["flake-registry", "--status"]);
    assert.match(status, /open .* mounted on \/var\/lib\/containers\/storage/);
    process.stdout.write(`# ${status.trim().replace(/\n/g, "\n# ")}\n`);
    // podman's storage is the registry.
    assert.equal((await v.sshOk(["podman", "info", "--format", "{{.Store.GraphRoot}}"])).trim(), MOUNT);
  });

  let savedSector = "";
  let baseId = "";
  it("a flake registered and data written; a mount failure injected on purpose: reported, system booted, data intact", async () => {
    let v = vm as Vm;
    const tar = await busyboxTar(work);
    await v.sshOk(["podman", "import", "-", "localhost/eos-test/bb:1"], { input: tar, timeoutMs: 180_000 });
    await v.sshOk([
      "flake-ctl",
      "podman",
      "register",
      "--container",
      "localhost/eos-test/bb:1",
      "--app",
      FLAKE,
      "--target",
      "/bin/busybox",
    ]);
    await v.sshOk(["sh", "-c", `echo registry-data-42 > ${MOUNT}/flakes/data.txt && sync`]);
    assert.equal((await v.sshOk([FLAKE, "echo", "flake ran"], { timeoutMs: 120_000 })).trim(), "flake ran");

    // The split registry: basesystem is in the image's read-only store, and the seed's
    // lynx-style delta flake (loaded into the writable registry) runs on it without a pull.
    assert.match(
      await v.sshOk(["podman", "images", "--format", "{{.Repository}}:{{.Tag}} {{.ReadOnly}}"]),
      /^localhost\/basesystem:latest true$/m,
    );
    await v.sshOk(["podman", "import", "-", "localhost/eos-test/lynx:1"], {
      input: await lynxDeltaTar(work),
      timeoutMs: 180_000,
    });
    await v.sshOk([
      "flake-ctl",
      "podman",
      "register",
      "--container",
      "localhost/eos-test/lynx:1",
      "--target",
      "/usr/bin/lynx",
      "--app",
      LYNX,
      "--base",
      "basesystem",
    ]);
    assert.match(
      (await v.sshOk([LYNX, "-dump"], { timeoutMs: 300_000 })).trim(),
      new RegExp(
        `^lynx -dump on debian ${await debianMajor(image.description)}\\.\\d+: no ${NEWER_BASE_PACKAGE}$`,
      ),
    );
    baseId = (
      await v.sshOk(["podman", "images", "--format", "{{.ID}}", "localhost/basesystem:latest"])
    ).trim();
    assert.match(baseId, /^[0-9a-f]{12}$/);
    // Damage the XFS superblock magic ("XFSB") of the opened registry.
    await v.sshOk(["flake-registry", "--stop"]);
    await v.sshOk(["sh", "-c", "flake-registry --status; true"]);
    // Re-open without mounting: activate, then unmount only.
    await v.sshOk(["flake-registry", "--activate", "/dev/disk/by-partlabel/p.spare"]);
    await v.sshOk(["umount", "--recursive", MOUNT]);
    savedSector = (await v.sshOk(["sh", "-c", "head -c 512 /dev/mapper/luksInstances | base64 -w0"])).trim();
    assert.equal(Buffer.from(savedSector, "base64").subarray(0, 4).toString(), "XFSB");
    await v.sshOk([
      "sh",
      "-c",
      "printf XXXX | dd of=/dev/mapper/luksInstances bs=1 count=4 conv=notrunc status=none && sync",
    ]);
    await v.sshOk(["cryptsetup", "close", "luksInstances"]);
    await down();

    v = await boot("boot with a damaged file system");
    // The system is up (SSH answered, multi-user reached); the unit failed and says why.
    assert.equal((await v.sshOk(["systemctl", "is-active", "multi-user.target"])).trim(), "active");
    assert.equal((await v.ssh(["systemctl", "is-failed", "registry-rw.service"])).stdout.trim(), "failed");
    const log = await journal(v);
    assert.match(log, /does not mount on \/var\/lib\/containers\/storage/);
    assert.match(log, /nothing was repaired or formatted/);
    process.stdout.write(`# report: ${(await v.sshOk(["cat", "/run/eos-registry/boot-report"])).trim()}\n`);
    assert.notEqual((await v.ssh(["mountpoint", "-q", MOUNT])).code, 0);
    // podman did not start on the tmpfs root.
    assert.notEqual(
      (await v.sshOk(["systemctl", "show", "-P", "ConditionResult", "podman-restart.service"])).trim(),
      "yes",
    );
    // Nothing wrote to the damaged file system: the sector is exactly as left.
    const now = Buffer.from(
      (await v.sshOk(["sh", "-c", "head -c 512 /dev/mapper/luksInstances | base64 -w0"])).trim(),
      "base64",
    );
    const expected = Buffer.from(savedSector, "base64");
    expected.write("XXXX", 0);
    assert.deepEqual(now, expected);
    // The admin repairs it (here: the saved sector back), then activates: the data is there.
    await v.sshOk(
      ["sh", "-c", "base64 -d | dd of=/dev/mapper/luksInstances bs=512 count=1 conv=notrunc status=none"],
      {
        input: savedSector,
      },
    );
    await v.sshOk(["flake-registry", "--activate", "/dev/disk/by-partlabel/p.spare"]);
    assert.equal((await v.sshOk(["cat", `${MOUNT}/flakes/data.txt`])).trim(), "registry-data-42");
    // The first call after an activation starts podman afresh: minutes under TCG on a busy machine.
    assert.equal((await v.sshOk([FLAKE, "echo", "repaired"], { timeoutMs: 300_000 })).trim(), "repaired");
  });

  it("the registry, its flake and data survive an OS switch from slot A to slot B", async () => {
    let v = vm ?? (await boot("before the switch"));
    // Slot B holds the newer image's root (written before the first boot), recorded in the boot
    // control block as os-update records a verified slot (the newer image's own record of its
    // slot A: version, hash, size, dm-verity); then os-update itself switches: it re-hashes slot B
    // against that record, makes B the default and reboots through GRUB.
    const newerEnv = await readImageGrubenv(newer.raw);
    const newerRecord = Object.fromEntries(
      ["version", "sha256", "size", "verity"].map((k) => [k, newerEnv.get(`eos_A_${k}`) ?? ""]),
    );
    assert.equal(newerRecord.version, VM_TEST_IMAGE_NEWER_BASE.version);
    const recordB = [
      "const fs = require('fs'); const f = '/boot/efi/EFI/BOOT/grubenv';",
      "const vars = new Map(fs.readFileSync(f, 'latin1').split('\\n').filter((l) => /^eos_\\w+=/.test(l)).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));",
      `for (const [k, val] of Object.entries(${JSON.stringify(newerRecord)})) vars.set('eos_B_' + k, val);`,
      "let body = '# GRUB Environment Block\\n'; for (const [k, val] of vars) body += k + '=' + val + '\\n';",
      "fs.writeFileSync(f + '.new', body.padEnd(1024, '#'), 'latin1'); fs.renameSync(f + '.new', f);",
    ].join(" ");
    // The boot control block lives on the ESP: wait until the system (and its mounts) is up.
    await v.ssh(["systemctl", "is-system-running", "--wait"], { timeoutMs: 240_000 });
    assert.match(await v.sshOk(["findmnt", "-n", "-o", "FSTYPE", "/boot/efi"]), /vfat/, "the ESP is mounted");
    await v.sshOk(["/usr/lib/eos/node", "-e", recordB]);
    const t0 = performance.now();
    const lap = (what: string) =>
      process.stdout.write(`# switch: ${what} after ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
    // os-update switches (re-hash, B the default); the machine is then powered off and
    // on, and GRUB boots B. Not `--reboot`: QEMU's warm reset under TCG (OVMF with a
    // TPM) took from 2 minutes to over 12 here, which is QEMU's, not the update's; the
    // update test exercises --reboot and kexec.
    const r = await v.ssh(["os-update", "--rollback"], { timeoutMs: 300_000 });
    lap(`os-update --rollback returned ${r.code}`);
    assert.equal(r.code, 0, r.stderr);
    assert.match(await v.sshOk(["cat", "/boot/efi/EFI/BOOT/grubenv"]), /^eos_default=B$/m);
    await down();
    v = await boot("after the switch");
    lap("SSH answers after the power cycle");
    await v.ssh(["systemctl", "is-system-running", "--wait"], { timeoutMs: 240_000 });
    assert.match(await v.sshOk(["cat", "/proc/cmdline"]), /eos\.slot=B/, "running from slot B now");
    assert.match(await v.sshOk(["cat", "/boot/efi/EFI/BOOT/grubenv"]), /^eos_default=B$/m);
    // The boot unit (not a manual activation this time) opened the registry with the TPM's key.
    assert.equal((await v.sshOk(["systemctl", "is-active", "registry-rw.service"])).trim(), "active");
    assert.match(await journal(v), /active on \/var\/lib\/containers\/storage .*key: tpm2/);
    assert.equal((await v.sshOk(["cat", `${MOUNT}/flakes/data.txt`])).trim(), "registry-data-42");
    // The default podman_pilot (flake-pilot's /usr/bin/podman-pilot): the flake keeps its name through the link.
    assert.equal((await v.sshOk(["readlink", FLAKE])).trim(), "/usr/bin/podman-pilot");
    assert.match(await v.sshOk(["flake-ctl", "list"]), /bb/);
    assert.equal(
      (await v.sshOk([FLAKE, "echo", "after the switch"], { timeoutMs: 300_000 })).trim(),
      "after the switch",
    );
    // The other slot's read-only store serves the base: the flake still runs on it.
    assert.match(
      (await v.sshOk([LYNX, "again"], { timeoutMs: 300_000 })).trim(),
      new RegExp(`^lynx again on debian ${await debianMajor(image.description)}\\.\\d+: Hello, world!$`),
    );
    // It runs on the newer base from slot B's read-only store, rebuilt on this first call.
    assert.match(await v.sshOk(["cat", "/etc/os-release"]), /^VERSION="?1\.1\.0-test"?$/m);
    const newBaseId = (
      await v.sshOk(["podman", "images", "--format", "{{.ID}}", "localhost/basesystem:latest"])
    ).trim();
    assert.notEqual(newBaseId, baseId, "slot B's store holds another basesystem");
    await down();
  });

  it("the same disk does not open with another VM's TPM (eos run --tpm), and is left untouched", async () => {
    if (vm) await vm.kill(); // only when an earlier test failed with its VM still up
    vm = undefined;
    // The disk as it is now (qcow2 overlay over the image) as a raw file for a second machine.
    const other = join(work, "other");
    await mkdir(join(other, "run"), { recursive: true });
    const raw = join(other, "disk.raw");
    const r = spawnSync("qemu-img", ["convert", "-O", "raw", join(work, "disk.qcow2"), raw]);
    assert.equal(r.status, 0, r.stderr?.toString());
    const before = await sha256File(raw);
    const t0 = performance.now();
    const v = await startEosRun(raw, image.sshKey, join(other, "run"));
    try {
      timings.push(`another VM's TPM (eos run) ${((performance.now() - t0) / 1000).toFixed(0)} s`);
      assert.match(v.stderr(), /under TCG|under KVM/);
      assert.match(v.stderr(), new RegExp(`-p ${v.port} `));
      assert.equal(v.sshOk(["cat", "/sys/class/tpm/tpm0/tpm_version_major"]).trim(), "2");
      assert.equal(v.sshOk(["cat", "/etc/hostname"]).trim(), "eos");
      // Degraded (registry-rw failed) once the boot is over; blame needs a finished boot.
      v.ssh(["systemctl", "is-system-running", "--wait"]);
      process.stdout.write(
        `# slowest units: ${v.ssh(["systemd-analyze", "blame"]).stdout.split("\n").slice(0, 6).join("; ")}\n`,
      );
      assert.equal(v.ssh(["systemctl", "is-failed", "registry-rw.service"]).stdout.trim(), "failed");
      const log = v.sshOk(["journalctl", "-b", "-o", "cat", "-u", "registry-rw.service"]);
      assert.match(log, /cannot load the registry's sealed key|refuses to unseal/);
      assert.notEqual(v.ssh(["cryptsetup", "status", "luksInstances"]).code, 0, "not opened");
      const dump = v.sshOk(["cryptsetup", "luksDump", "/dev/disk/by-partlabel/p.spare"]);
      assert.match(dump, /^\s+0: luks2$/m);
      assert.match(dump, /^\s+0: eos-tpm2$/m);
      assert.equal(
        v.sshOk(["blkid", "-p", "-s", "TYPE", "-o", "value", "/dev/disk/by-partlabel/p.spare"]).trim(),
        "crypto_LUKS",
      );
      v.ssh(["systemctl", "poweroff"]);
      assert.equal(await v.exited, 0, v.stderr());
    } finally {
      v.kill();
    }
    assert.match(v.stderr(), /QEMU exited \(0\)/);
    const console = await readFile(join(other, "run", "console.log"), "utf8");
    assert.match(console, /EOS: booting slot [AB]/);
    assert.equal(await sha256File(raw), before, "eos run never writes the disk it boots");
  });
});
