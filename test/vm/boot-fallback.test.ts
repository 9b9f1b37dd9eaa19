/**
 * "Falls back by itself": slot B holds a kernel and initrd but a root that
 * cannot boot (no init), and grubenv puts B on trial with 2 tries. GRUB
 * counts each try, the initramfs panics, panic=10 resets the machine, and
 * once the tries are spent GRUB clears the trial and boots slot A, with
 * nobody touching the machine.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ROOT_CLONE_LABEL, ROOT_LABEL } from "../../src/core/manifest.ts";
import {
  BOOT_TIMEOUT_MS,
  copyImage,
  editImageGrubenv,
  readImageGrubenv,
  readPartition,
  startTestVm,
  writePartition,
} from "../helpers/vm.ts";
import { testImage, vmSkipReason, VM_TMP } from "../helpers/vm-image.ts";

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

test(
  "a trial slot that cannot boot falls back to the committed slot after its tries",
  { skip, timeout: 40 * 60_000 },
  async (t) => {
    const image = await testImage({ version: "1.0.0-test" });
    await mkdir(join(VM_TMP, "run"), { recursive: true });
    const dir = await mkdtemp(join(VM_TMP, "run", "fallback-"));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const raw = await copyImage(image.raw, dir);
    await writePartition(raw, ROOT_CLONE_LABEL, await brokenRoot(raw, dir));
    await editImageGrubenv(raw, { eos_trial: "B", eos_tries: "2" });

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
    assert.equal(await vm.powerOff({ timeoutMs: 120_000 }), 0);

    // GRUB recorded it in the boot control block: no trial, no tries, A committed.
    const env = await readImageGrubenvFromVm(join(dir, "vm", "disk.qcow2"), dir);
    assert.equal(env.get("eos_trial"), "");
    assert.equal(env.get("eos_tries"), "0");
    assert.equal(env.get("eos_default"), "A");
  },
);

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
