/**
 * bench/rpi-boot: the RPI image's boot chain in QEMU, from U-Boot on.
 *
 *   sudo npm run bench:rpi -- [IMAGE] [--trial] [--timeout SECONDS] [--work DIR]
 *
 * QEMU 7.2 has no Raspberry Pi 4 (raspi4b came in QEMU 9) and the Pi's own
 * firmware (start4.elf) does not run in QEMU, so this starts what the
 * firmware would start: the image's own u-boot.bin (u-boot-rpi's rpi_arm64,
 * which also drives a Pi 3) on `-M raspi3b`, with the image's own
 * bcm2837-rpi-3-b.dtb, the disk as the SD card. U-Boot's EFI boot manager
 * finds EFI/BOOT/BOOTAA64.EFI on the ESP, GRUB reads and writes grubenv
 * through U-Boot's block I/O, and boots the slot's kernel, initrd and
 * dm-verity root. With --trial the copy's grubenv first puts slot A on trial
 * with 3 tries: GRUB must count it down to 2 and boot with COMMIT_UPDATE.
 * Prints the seconds to each milestone on the serial console (the mini
 * UART, QEMU's second serial port, as on the Pi's GPIO header) and the
 * grubenv GRUB left. The image is not changed: it runs on a sparse copy
 * padded to a power of two (QEMU's SD card model requires one).
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { copyFile, mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { decodeGrubenv, encodeGrubenv } from "../src/core/update/grubenv.ts";
import { REPO } from "../test/helpers/vm-image.ts";

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const WITH_VALUE = ["--timeout", "--work"];
const positional = process.argv
  .slice(2)
  .find((a, i, all) => !a.startsWith("--") && !WITH_VALUE.includes(all[i - 1] ?? ""));
const IMAGE = resolve(positional ?? join(REPO, "out/EOS.aarch64-RPI.raw"));
const WORK = resolve(arg("--work") ?? join(REPO, ".tmp/bench-rpi"));
const TIMEOUT = Number(arg("--timeout") ?? "600");
const TRIAL = process.argv.includes("--trial");
const env = { ...process.env, MTOOLS_SKIP_CHECK: "1" };

if (!existsSync(IMAGE)) {
  console.log(
    `bench/rpi-boot: ${IMAGE} does not exist: sudo eos build images/aarch64.yaml --arch aarch64 --profile RPI --out out`,
  );
  process.exit(1);
}
const sh = (argv: string[], input?: Buffer): Buffer => {
  const r = spawnSync(argv[0] as string, argv.slice(1), { env, input, maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${argv.join(" ")}: ${r.stderr?.toString() ?? r.error?.message}`);
  return r.stdout;
};

await rm(WORK, { recursive: true, force: true });
await mkdir(WORK, { recursive: true });
const disk = join(WORK, "sd.raw");
sh(["cp", "--sparse=always", IMAGE, disk]);
let size = 1;
while (size < (await stat(disk)).size) size *= 2;
sh(["truncate", "-s", String(size), disk]);
sh(["sgdisk", "-e", disk]); // the backup GPT to the new end, as on a larger card
const espOffset = Number(/First sector: (\d+)/.exec(sh(["sgdisk", "-i", "1", disk]).toString())?.[1]) * 512;
const esp = `${disk}@@${espOffset}`;
for (const f of ["u-boot.bin", "bcm2837-rpi-3-b.dtb"])
  await writeFile(join(WORK, f), sh(["mtype", "-i", esp, `::${f}`]));
if (TRIAL) {
  const vars = decodeGrubenv(sh(["mtype", "-i", esp, "::EFI/BOOT/grubenv"]));
  vars.set("eos_trial", "A");
  vars.set("eos_tries", "3");
  await writeFile(join(WORK, "grubenv"), encodeGrubenv(vars));
  sh(["mcopy", "-o", "-i", esp, join(WORK, "grubenv"), "::EFI/BOOT/grubenv"]);
}

const milestones: Array<[string, RegExp]> = [
  ["U-Boot", /U-Boot 20\d\d/],
  // U-Boot 2022.04 (bookworm) names the file; 2025.01 (trixie) its boot manager's bootflow.
  ["U-Boot starts BOOTAA64.EFI", /Booting \/efi\\boot\\bootaa64\.efi|Booting bootflow .* with efi_mgr/i],
  ["GRUB boots a slot", /EOS: booting (trial )?slot/],
  ["kernel (EFI stub)", /EFI stub: Booting Linux Kernel/],
  ["initramfs", /Run \/init as init process/],
  ["root slot mounted (dm-verity)", /verity: sha256|Mounting root file system.*done/s],
  ["systemd", /Welcome to .*EOS/],
  ["login prompt or autologin shell", /login:|root@[\w-]+:~#/],
];
const log = join(WORK, "console.log");
const t0 = performance.now();
const qemu = spawn(
  "nice",
  [
    "-n",
    "10",
    "qemu-system-aarch64",
    "-M",
    "raspi3b",
    "-kernel",
    join(WORK, "u-boot.bin"),
    "-dtb",
    join(WORK, "bcm2837-rpi-3-b.dtb"),
    "-drive",
    `if=sd,format=raw,file=${disk}`,
    "-serial",
    `file:${join(WORK, "pl011.log")}`,
    "-serial",
    `file:${log}`,
    "-display",
    "none",
    "-monitor",
    "none",
    "-no-reboot",
  ],
  { stdio: "ignore" },
);
const seen = new Map<string, number>();
let exited = false;
qemu.on("exit", () => (exited = true));
while (!exited && (performance.now() - t0) / 1000 < TIMEOUT && seen.size < milestones.length) {
  await new Promise((r) => setTimeout(r, 1000));
  const text =
    (await readFile(log, "utf8").catch(() => "")) +
    (await readFile(join(WORK, "pl011.log"), "utf8").catch(() => ""));
  for (const [name, re] of milestones)
    if (!seen.has(name) && re.test(text)) {
      seen.set(name, (performance.now() - t0) / 1000);
      console.log(`${seen.get(name)?.toFixed(1).padStart(6)} s  ${name}`);
    }
}
if (!exited) qemu.kill("SIGTERM");
await new Promise((r) => setTimeout(r, 1000));
const consoleText = await readFile(log, "utf8").catch(() => "");
const cmdline = /Kernel command line: (.*)/.exec(
  consoleText + (await readFile(join(WORK, "pl011.log"), "utf8").catch(() => "")),
)?.[1];
const after = decodeGrubenv(sh(["mtype", "-i", esp, "::EFI/BOOT/grubenv"]));
const pick = ["eos_default", "eos_trial", "eos_tries", "eos_unconfirmed"].map(
  (k) => `${k}=${after.get(k) ?? ""}`,
);
console.log(
  `missing:  ${
    milestones
      .filter(([n]) => !seen.has(n))
      .map(([n]) => n)
      .join(", ") || "none"
  }`,
);
console.log(`cmdline:  ${cmdline ?? "(not seen)"}`);
console.log(`grubenv after the boot (written by GRUB through U-Boot's EFI block I/O): ${pick.join(" ")}`);
console.log(`logs:     ${log} (mini UART), ${join(WORK, "pl011.log")} (PL011)`);
await copyFile(log, join(WORK, "console.last.log"));
