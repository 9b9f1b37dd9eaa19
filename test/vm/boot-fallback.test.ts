/**
 * "Falls back by itself": slot B holds a kernel and initrd but a root that
 * cannot boot (no init), and grubenv puts B on trial with 2 tries. GRUB
 * counts each try, the initramfs panics, panic=10 resets the machine, and
 * once the tries are spent GRUB clears the trial and boots slot A, with
 * nobody touching the machine. And a committed slot changed while the
 * machine was off fails its dm-verity check in the initramfs; after
 * UNCONFIRMED_LIMIT such boots GRUB makes the other verified slot the default.
 * The device reports the fallback to an update server on the host (the guest
 * reaches it at 10.0.2.2): update_commit.service notices it at the boot of
 * slot A and queues `fell_back`, keeps it while the device has no token, and
 * sends it once the device is given a server and its token.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ROOT_CLONE_LABEL, ROOT_LABEL } from "../../src/core/manifest.ts";
import { UNCONFIRMED_LIMIT } from "../../src/core/image/grubcfg.ts";
import {
  BOOT_TIMEOUT_MS,
  copyImage,
  editImageGrubenv,
  readImageGrubenv,
  readPartition,
  startTestVm,
  writePartition,
} from "../helpers/vm.ts";
import { testImage, VM_TEST_IMAGE, vmSkipReason, VM_TMP } from "../helpers/vm-image.ts";
import { runEos } from "../helpers/run.ts";
import { startServer, type RunningServer } from "../helpers/serve.ts";
import type { DeviceRow, EventRow } from "../../src/core/fleet/format.ts";

const skip = vmSkipReason();

function sh(argv: string[]): void {
  const r = spawnSync(argv[0] as string, argv.slice(1), { stdio: ["ignore", "ignore", "pipe"] });
  if (r.status !== 0) throw new Error(`${argv.join(" ")}: ${r.stderr.toString()}`);
}

/** A squashfs with slot A's /boot (kernel and initrd) and nothing else: no /sbin/init. */
async function brokenRoot(raw: string, dir: string): Promise<Buffer> {
  await writeFile(join(dir, "slotA.squashfs"), await readPartition(raw, ROOT_LABEL));
  sh(["unsquashfs", "-q", "-n", "-d", join(dir, "broken"), join(dir, "slotA.squashfs"), "boot"]);
  await rm(join(dir, "slotA.squashfs"));
  sh([
    "mksquashfs",
    join(dir, "broken"),
    join(dir, "broken.squashfs"),
    "-comp",
    "gzip",
    "-noappend",
    "-quiet",
    "-no-progress",
  ]);
  return readFile(join(dir, "broken.squashfs"));
}

const DEVICE = "fallback-1";
const BROKEN = "2.0.0-broken";

/** The host's update server for the guest: a device token for DEVICE and a viewer's admin token. */
async function fleetServer(dir: string): Promise<{ server: RunningServer; token: string; admin: string }> {
  const config = join(dir, "os-update.yml");
  await mkdir(join(dir, "images"), { recursive: true });
  await writeFile(config, `---\nupdate: []\nimages_dir: ${join(dir, "images")}\n`);
  const tokensDir = join(dir, "tokens");
  const token = await runEos("os-update-server", ["token", "add", DEVICE, "--tokens-dir", tokensDir]);
  assert.equal(token.code, 0, token.stderr);
  const stateDir = ["--config", config, "--state-dir", join(dir, "state")];
  const admin = await runEos("os-update-server", [
    "admin-token",
    "add",
    "watcher",
    "--role",
    "viewer",
    ...stateDir,
  ]);
  assert.equal(admin.code, 0, admin.stderr);
  const server = await startServer({ config, tokensDir });
  return { server, token: token.stdout.toString().trim(), admin: admin.stdout.toString().trim() };
}

test(
  "a trial slot that cannot boot falls back to the committed slot after its tries, and the server learns it",
  { skip, timeout: 40 * 60_000 },
  async (t) => {
    const image = await testImage(VM_TEST_IMAGE);
    await mkdir(join(VM_TMP, "run"), { recursive: true });
    const dir = await mkdtemp(join(VM_TMP, "run", "fallback-"));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const raw = await copyImage(image.raw, dir);
    await writePartition(raw, ROOT_CLONE_LABEL, await brokenRoot(raw, dir));
    // As os-update --apply leaves it: B on trial, its version recorded, B pending its commit.
    await editImageGrubenv(raw, { eos_trial: "B", eos_tries: "2", eos_pending: "B", eos_B_version: BROKEN });
    const fleet = await fleetServer(join(dir, "server"));
    t.after(() => fleet.server.stop());

    const vm = await startTestVm(t, image, { raw, workDir: join(dir, "vm") });
    // Try 1 and try 2: GRUB boots B with COMMIT_UPDATE, the initramfs finds no init and panics.
    for (const attempt of [1, 2]) {
      const m = await vm.waitForConsole(
        new RegExp(`(?:[\\s\\S]*?EOS: booting slot B[^\\n]*COMMIT_UPDATE){${attempt}}`),
        {
          timeoutMs: BOOT_TIMEOUT_MS,
        },
      );
      assert.ok(m);
      await vm.waitForConsole(new RegExp(`(?:[\\s\\S]*?No init found){${attempt}}`), {
        timeoutMs: BOOT_TIMEOUT_MS,
      });
    }
    // Tries spent: GRUB gives up on B and boots the committed slot A.
    await vm.waitForConsole(/EOS: booting slot A/, { timeoutMs: BOOT_TIMEOUT_MS });
    await vm.waitForSsh({ timeoutMs: BOOT_TIMEOUT_MS });
    const cmdline = (await vm.sshOk(["cat", "/proc/cmdline"])).trim().split(/\s+/);
    assert.ok(cmdline.includes("eos.slot=A"), cmdline.join(" "));
    assert.ok(!cmdline.includes("COMMIT_UPDATE"));
    const bootsOfB = vm.console().match(/EOS: booting slot B/g)?.length ?? 0;
    assert.equal(bootsOfB, 2, "slot B was tried exactly as often as eos_tries said");

    // The boot unit noticed the fallback at this boot of A; with no token yet it keeps the report.
    await waitForBootUnit(vm);
    const journal = await vm.sshOk(["journalctl", "-b", "-u", "update_commit.service", "--no-pager"]);
    assert.match(journal, new RegExp(`${BROKEN} did not come up \\(tries-ran-out\\): slot A runs again`));
    // Now the device gets a server (its config points at the test's port) and its token, as
    // `fleet --getkey` would put it in /run; the boot unit's next run sends what it kept.
    const configured = new Date();
    await vm.sshOk([
      "sed",
      "-i",
      `s#http://10\\.0\\.2\\.2:8080#http://10.0.2.2:${fleet.server.port}#`,
      "/etc/os-update.yml",
    ]);
    assert.match(
      await vm.sshOk(["cat", "/etc/os-update.yml"]),
      new RegExp(`10\\.0\\.2\\.2:${fleet.server.port}`),
    );
    await vm.sshOk(["sh", "-c", "umask 077 && mkdir -p /run/eos && cat > /run/eos/fleet-token"], {
      input: `${fleet.token}\n`,
    });
    await vm.sshOk(["systemctl", "restart", "update_commit.service"]);
    const shown = await runEos(
      "os-update-server",
      ["devices", "show", DEVICE, "--json", "--server", fleet.server.url],
      { env: { ...process.env, EOS_ADMIN_TOKEN: fleet.admin } },
    );
    assert.equal(shown.code, 0, `the server knows ${DEVICE}: ${shown.stderr}`);
    const { device, events } = JSON.parse(shown.stdout.toString()) as {
      device: DeviceRow;
      events: EventRow[];
    };
    const fellBack = events.filter((e) => e.type === "fell_back");
    assert.equal(fellBack.length, 1, `one fell_back report: ${events.map((e) => e.type).join(" ")}`);
    const report = fellBack[0] as EventRow;
    assert.deepEqual([report.data.version, report.data.slot], [BROKEN, "A"]);
    assert.ok(
      Date.parse(report.time) < configured.getTime(),
      `noted at boot (${report.time}), before the device had a server (${configured.toISOString()})`,
    );
    assert.deepEqual(
      [device.state, device.running_slot, device.running_version, device.other_version, device.last_event],
      ["fell-back", "A", "1.0.0-test", BROKEN, "fell_back"],
    );
    assert.equal(await vm.powerOff({ timeoutMs: 120_000 }), 0);

    // GRUB recorded it in the boot control block: no trial, no tries, A committed.
    const env = await readImageGrubenvFromVm(join(dir, "vm", "disk.qcow2"), dir);
    assert.equal(env.get("eos_trial"), "");
    assert.equal(env.get("eos_tries"), "0");
    assert.equal(env.get("eos_default"), "A");
    assert.equal(env.get("eos_pending"), "", "the fallback is reported once: its mark is cleared");
  },
);

/** update_commit.service has run at this boot (active, or failed: the assertions after it say why). */
async function waitForBootUnit(vm: Awaited<ReturnType<typeof startTestVm>>): Promise<void> {
  for (let i = 0; i < 120; i++) {
    const state = (await vm.ssh(["systemctl", "is-active", "update_commit.service"])).stdout.trim();
    if (state === "active" || state === "failed") return;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** The VM wrote to its qcow2 overlay: flatten it to raw and read grubenv from the ESP. */
async function readImageGrubenvFromVm(qcow2: string, dir: string): Promise<Map<string, string>> {
  const flat = join(dir, "after.raw");
  sh(["qemu-img", "convert", "-O", "raw", qcow2, flat]);
  try {
    return await readImageGrubenv(flat);
  } finally {
    await rm(flat, { force: true });
  }
}

test(
  "a root slot changed while the machine was off fails dm-verity at boot, and GRUB falls back to the verified slot",
  { skip, timeout: 40 * 60_000 },
  async (t) => {
    const image = await testImage(VM_TEST_IMAGE);
    await mkdir(join(VM_TMP, "run"), { recursive: true });
    const dir = await mkdtemp(join(VM_TMP, "run", "verity-"));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const raw = await copyImage(image.raw, dir);
    // Slot B: the same verified system, recorded as os-update records a written slot.
    const slotA = await readPartition(raw, ROOT_LABEL);
    await writePartition(raw, ROOT_CLONE_LABEL, slotA);
    const shipped = await readImageGrubenv(raw);
    assert.ok(shipped.get("eos_A_verity"), "eos build records slot A's dm-verity parameter");
    await editImageGrubenv(raw, {
      eos_B_version: shipped.get("eos_A_version") ?? "",
      eos_B_sha256: shipped.get("eos_A_sha256") ?? "",
      eos_B_size: shipped.get("eos_A_size") ?? "",
      eos_B_verity: shipped.get("eos_A_verity") ?? "",
    });
    // Slot A changed offline: one byte of the squashfs's mkfs_time, which squashfs itself never checks.
    slotA[8] = (slotA[8] as number) ^ 0xff;
    await writePartition(raw, ROOT_LABEL, slotA);

    // Each boot runs with -no-reboot, so QEMU itself counts them: a refused boot panics, the
    // guest resets and QEMU ends. The serial console loses bytes under TCG when the kernel and
    // the initramfs write at once, so its text only says why, never how often.
    const vmDir = join(dir, "vm");
    const started = performance.now();
    const consoles: string[] = [];
    for (let boot = 1; boot <= UNCONFIRMED_LIMIT; boot++) {
      const refused = await startTestVm(t, image, {
        raw,
        workDir: vmDir,
        reuseDisk: boot > 1,
        noReboot: true,
      });
      const code = await refused.waitForExit({
        timeoutMs: BOOT_TIMEOUT_MS,
        what: `boot ${boot} of the changed slot A neither came up nor reset`,
      });
      assert.equal(code, 0, `boot ${boot}: QEMU ended because the guest reset, not by a kill`);
      const text = refused.console();
      consoles.push(text);
      // Each boot: GRUB chose slot A (the kernel prints its command line before the initramfs
      // writes, so that line survives); why it reset is asserted over all boots below.
      assert.match(text, /Kernel command line: .*eos\.slot=A/, `boot ${boot} booted slot A`);
      process.stdout.write(
        `# boot ${boot} of slot A reset after ${((performance.now() - started) / 1000).toFixed(0)} s\n`,
      );
    }
    // Still -no-reboot: one more refusal would end QEMU before SSH answers.
    const vm = await startTestVm(t, image, { raw, workDir: vmDir, reuseDisk: true, noReboot: true });
    await vm.waitForSsh({ timeoutMs: BOOT_TIMEOUT_MS });
    const cmdline = (await vm.sshOk(["cat", "/proc/cmdline"])).trim().split(/\s+/);
    assert.ok(cmdline.includes("eos.slot=B"), cmdline.join(" "));
    assert.ok(cmdline.includes(`eos.verity=${shipped.get("eos_A_verity")}`), cmdline.join(" "));
    assert.match(consoles.join("\n"), /verity: .*data block 0 is corrupted/, "dm-verity refused slot A");
    // The fallback came up and confirmed its boot; then power off and read what GRUB and it wrote.
    for (let i = 0; i < 60; i++) {
      const state = (await vm.ssh(["systemctl", "is-active", "update_commit.service"])).stdout.trim();
      if (state === "active" || state === "failed") break;
      await new Promise((r) => setTimeout(r, 1000));
    }
    assert.equal(await vm.powerOff({ timeoutMs: 120_000 }), 0);
    const env = await readImageGrubenvFromVm(join(dir, "vm", "disk.qcow2"), dir);
    assert.equal(env.get("eos_default"), "B");
    assert.equal(env.get("eos_unconfirmed"), "");
  },
);
