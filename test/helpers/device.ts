/**
 * A device for os-update tests: an A/B disk image attached to a loop device,
 * an ESP directory, and a context root whose /proc/cmdline, boot_id and
 * /dev/disk/by-partuuid say which slot "is running". Changing those is how a
 * test simulates booting into a slot; kexec and reboot are recorded.
 */
import { captureContext } from "./context.ts";
import { randomUUID } from "node:crypto";
import { copyFile, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile, unlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { encodeGrubenv, decodeGrubenv } from "../../src/core/update/grubenv.ts";
import { readGpt, requirePartition } from "../../src/core/gpt.ts";
import { openBlockSource } from "../../src/io/files.ts";
import type { BootActions } from "../../src/io/update/boot-actions.ts";
import { osUpdateMain } from "../../src/cli/os-update.ts";
import { mustRun } from "./run.ts";

export interface BootCall {
  action: "kexecLoad" | "kexecExec" | "reboot";
  kernel?: string;
  initrd?: string;
  cmdline?: string;
}

export interface DeviceRun {
  code: number;
  stdout: string;
  stderr: string;
}

export interface TestDevice {
  root: string;
  image: string;
  loop: string;
  esp: string;
  uuid: { A: string; B: string };
  calls: BootCall[];
  boot(slot: "A" | "B", extra?: string): Promise<void>;
  grubenv(): Promise<Map<string, string>>;
  run(args: string[], options?: { signal?: AbortSignal; progressReportMs?: number }): Promise<DeviceRun>;
  close(): Promise<void>;
}

/**
 * losetup -P, then make sure the partition nodes exist: without udev (as in
 * containers) the kernel's first partition scan is not always there yet.
 */
export async function attachLoop(image: string): Promise<string> {
  const loop = (await mustRun("losetup", ["-P", "--show", "-f", image])).stdout.toString().trim();
  const name = basename(loop);
  if (!(await stat(`/sys/block/${name}/${name}p1`).catch(() => undefined)))
    await mustRun("partx", ["-a", loop]).catch(() => undefined);
  for (let part = 1; part <= 4; part++) {
    const node = `${loop}p${part}`;
    if (await stat(node).catch(() => undefined)) continue;
    const dev = (await readFile(`/sys/block/${name}/${name}p${part}/dev`, "utf8").catch(() => "")).trim();
    if (dev) await mustRun("mknod", [node, "b", ...dev.split(":")]);
  }
  return loop;
}

export async function makeDevice(
  imagePath: string,
  manifest: { version: string; partitions: { root: { sha256: string; size: number } } },
  files: { config: string; keys: string[]; token?: string },
): Promise<TestDevice> {
  const root = await mkdtemp(join(tmpdir(), "eos-device-"));
  const image = join(root, "disk.raw");
  await copyFile(imagePath, image);
  const source = await openBlockSource(image);
  const { table } = await readGpt(source);
  await source.close();
  const uuid = {
    A: requirePartition(table, "p.lxreadonly").uniqueGuid,
    B: requirePartition(table, "p.lxrootclone1").uniqueGuid,
  };
  const loop = await attachLoop(image);
  const esp = join(root, "boot/efi");
  // The host kernel here has no vfat: the ESP is a plain directory, which is all os-update sees of it anyway.
  await mkdir(join(esp, "EFI/BOOT"), { recursive: true });
  const vars = new Map([
    ["eos_default", "A"],
    ["eos_trial", ""],
    ["eos_tries", "0"],
    ["eos_A_part", "gpt2"],
    ["eos_B_part", "gpt3"],
    ["eos_A_uuid", uuid.A],
    ["eos_B_uuid", uuid.B],
    ["eos_A_version", manifest.version],
    ["eos_A_sha256", manifest.partitions.root.sha256],
    ["eos_A_size", String(manifest.partitions.root.size)],
  ]);
  await writeFile(join(esp, "EFI/BOOT/grubenv"), encodeGrubenv(vars));
  await mkdir(join(root, "etc"), { recursive: true });
  await writeFile(join(root, "etc/os-update.yml"), files.config);
  await mkdir(join(root, "usr/share/eos/keys"), { recursive: true });
  for (const [i, key] of files.keys.entries())
    await copyFile(key, join(root, `usr/share/eos/keys/release-${i}.pub`));
  if (files.token !== undefined) {
    await mkdir(join(root, "run/eos"), { recursive: true });
    await writeFile(join(root, "run/eos/fleet-token"), files.token, { mode: 0o600 });
  }
  const calls: BootCall[] = [];
  const boot: BootActions = {
    async kexecLoad(kernel, initrd, cmdline) {
      calls.push({
        action: "kexecLoad",
        kernel: await readFile(kernel, "utf8"),
        ...(initrd ? { initrd: await readFile(initrd, "utf8") } : {}),
        cmdline,
      });
    },
    async kexecExec() {
      calls.push({ action: "kexecExec" });
    },
    async reboot() {
      calls.push({ action: "reboot" });
    },
  };
  const device: TestDevice = {
    root,
    image,
    loop,
    esp,
    uuid,
    calls,
    async boot(slot, extra = "") {
      await mkdir(join(root, "proc/sys/kernel/random"), { recursive: true });
      await writeFile(join(root, "proc/sys/kernel/random/boot_id"), `${randomUUID()}\n`);
      await writeFile(
        join(root, "proc/cmdline"),
        `BOOT_IMAGE=/boot/vmlinuz console=ttyS0 root=PARTUUID=${uuid[slot].toLowerCase()} eos.slot=${slot} panic=10 ${extra}\n`,
      );
      await mkdir(join(root, "dev/disk/by-partuuid"), { recursive: true });
      for (const s of ["A", "B"] as const) {
        const link = join(root, "dev/disk/by-partuuid", uuid[s].toLowerCase());
        await unlink(link).catch(() => undefined);
        await symlink(`${loop}p${s === "A" ? 2 : 3}`, link);
      }
    },
    async grubenv() {
      return decodeGrubenv(await readFile(join(esp, "EFI/BOOT/grubenv")));
    },
    async run(args, options = {}) {
      const captured = captureContext({ root, ...(options.signal ? { signal: options.signal } : {}) });
      const ctx = captured.ctx;
      let err = "";
      let code: number;
      try {
        code = await osUpdateMain(args, ctx, {
          boot,
          retryDelayMs: 20,
          ...(options.progressReportMs === undefined ? {} : { progressReportMs: options.progressReportMs }),
        });
      } catch (error) {
        const e = error as { code?: string; message: string; exitCode?: number };
        err += `error [${e.code ?? "?"}]: ${e.message}\n`;
        code = e.exitCode ?? 70;
      }
      return { code, stdout: captured.stdout(), stderr: captured.stderr() + err };
    },
    async close() {
      await mustRun("losetup", ["-d", loop]).catch(() => undefined);
      await rm(root, { recursive: true, force: true });
    },
  };
  await device.boot("A");
  return device;
}
