/**
 * The RPI profile (EOS.aarch64-RPI.raw, Raspberry Pi 4; also the Pi 5 on
 * trixie): the AB disk contract unchanged, plus what the Pi's boot chain
 * needs on the ESP. The Pi's firmware (start4.elf, read by the Pi 4's EEPROM
 * bootloader from the first FAT partition, GPT or MBR; the Pi 5's EEPROM
 * itself) starts U-Boot, whose UEFI implementation
 * starts the very BOOTAA64.EFI GRUB of the AB image, so grub.cfg, grubenv,
 * tries and COMMIT_UPDATE stay what they are on every other EOS disk
 * (docs/boot-control.md, "Raspberry Pi"). The firmware and U-Boot come from
 * Debian .debs pinned here per suite by version and sha256, fetched on the build host
 * (no emulation, no change to the cached root); the device trees come from
 * the root's own kernel, so the board description matches the kernel booted.
 */
import { EosError } from "../errors.ts";
import type { ImageDescription } from "./description.ts";

/** A Debian package the build fetches by itself, pinned to one file of the archive. */
export interface PinnedDeb {
  package: string;
  version: string;
  /** Where the file is below the mirror (the Packages index's Filename:). */
  filename: string;
  sha256: string;
  size: number;
}

/** The two packages the Pi's boot chain comes from, for one Debian suite. */
export interface RpiBootDebs {
  firmware: PinnedDeb;
  uboot: PinnedDeb;
}

/**
 * Pins by `distribution.suite`. raspi-firmware is in non-free-firmware,
 * which the root does not need: the build fetches the file by its pool path,
 * so the description's components (part of the root cache key) stay as they
 * are. When Debian replaces a version on the mirror, take the new Filename,
 * SHA256 and Size from dists/<suite>/<component>/binary-arm64/Packages.
 */
export const RPI_BOOT_DEBS = {
  bookworm: {
    firmware: {
      package: "raspi-firmware",
      version: "1.20220830+ds-1",
      filename: "pool/non-free-firmware/r/raspi-firmware/raspi-firmware_1.20220830+ds-1_all.deb",
      sha256: "0094ced47a7fbb6a220ff83e7b43aa637a5d8f6802461e2e4e474597fb796f62",
      size: 4815784,
    },
    uboot: {
      package: "u-boot-rpi",
      version: "2023.01+dfsg-2+deb12u3",
      filename: "pool/main/u/u-boot/u-boot-rpi_2023.01+dfsg-2+deb12u3_arm64.deb",
      sha256: "3722f286cfafca03f4cac7adade04fccf66158ad8467501b9deabd154162b5e8",
      size: 378496,
    },
  },
  // Taken 2026-12-03 from trixie's Packages.xz, whose sha256 the signed InRelease lists.
  trixie: {
    firmware: {
      package: "raspi-firmware",
      version: "1.20240424+ds-6",
      filename: "pool/non-free-firmware/r/raspi-firmware/raspi-firmware_1.20240424+ds-6_all.deb",
      sha256: "f95a3d3c41df10bac33580be91b595efa1e126ad5e4b7eca75ce26fbbc69af06",
      size: 4828544,
    },
    uboot: {
      package: "u-boot-rpi",
      version: "2025.01-3+deb13u1",
      filename: "pool/main/u/u-boot/u-boot-rpi_2025.01-3+deb13u1_arm64.deb",
      sha256: "c9e1aa3a17ccc1ff85858ace8cc43c917d1e0f70f04258438f1ae9b84b8b8c72",
      size: 540796,
    },
  },
} as const satisfies Record<string, RpiBootDebs>;

/**
 * Suites whose kernel has bcm2712-rpi-5-b.dtb and whose U-Boot knows the
 * BCM2712 (upstream since 2024.04): trixie's 6.12 and 2025.01, not
 * bookworm's 6.1 and 2023.01.
 */
const PI5_SUITES: ReadonlySet<string> = new Set(["trixie"]);

/** What the RPI profile does for one suite. */
export interface RpiSuite {
  suite: string;
  debs: RpiBootDebs;
  /** The Pi 5 boots: its DTB is required and config.txt has its section. */
  pi5: boolean;
}

/** The suite's pins, or a CONFIG error naming `distribution.suite` and the suites that have pins. */
export function rpiSuite(suite: string, file: string): RpiSuite {
  const debs = (RPI_BOOT_DEBS as Partial<Record<string, RpiBootDebs>>)[suite];
  if (!debs)
    throw new EosError(
      "CONFIG",
      `${file}: distribution.suite is ${suite}; the RPI profile has pinned Pi boot packages for ${Object.keys(RPI_BOOT_DEBS).join(", ")} only`,
      {
        hint: "pin raspi-firmware and u-boot-rpi for that suite in src/core/image/rpi.ts, or build another suite",
      },
    );
  return { suite, debs, pi5: PI5_SUITES.has(suite) };
}

/** The name a pinned .deb is cached and extracted under: the pool file's own name. */
export function debFileName(deb: PinnedDeb): string {
  const name = deb.filename.split("/").at(-1) ?? "";
  if (
    !/^[a-z0-9][a-z0-9+.~-]*_[A-Za-z0-9.+~-]+_(all|arm64)\.deb$/.test(name) ||
    !/^[0-9a-f]{64}$/.test(deb.sha256)
  )
    throw new EosError("INTERNAL", `pinned package ${deb.package}: ${deb.filename} is not a pool .deb path`);
  return name;
}

export const UBOOT_FILE = "u-boot.bin";

/**
 * The Pi 4 EEPROM reads FAT32 on a GPT ESP since 2020-09 (FAT16 only since
 * 2021-10 and with reported failures): the RPI ESP is FAT32 with 512-byte
 * clusters, which needs 65525 clusters, so at least 64 MiB.
 */
export const RPI_MIN_ESP = 64 * 1024 * 1024;

/** Where a file of the ESP comes from: a pinned .deb, or the root tree's kernel. */
export type EspSource =
  { from: "raspi-firmware" | "u-boot-rpi"; path: string } | { from: "kernel-dtbs"; path: string };

export interface EspFile {
  source: EspSource;
  /** Path on the FAT partition, from its root. */
  dest: string;
  /**
   * false: copied when the package or kernel has it, else the build says
   * which board it cannot boot (the Pi 5's DTB is not in bookworm's 6.1,
   * so it is required only where the suite boots the Pi 5).
   */
  required: boolean;
  /** The board that needs it, for that message. */
  board: string;
}

const PI5_DTB = "bcm2712-rpi-5-b.dtb";

/** The firmware's own files for the Pi 4 family (start4.elf reads config.txt and the DTB). */
const FIRMWARE = ["start4.elf", "fixup4.dat"];

/**
 * Device trees the firmware loads by board (upstream names: config.txt says
 * upstream_kernel=1), handed to U-Boot and by U-Boot's UEFI to the kernel.
 * bcm2837 (Pi 3) is there for the emulated check (QEMU -M raspi3b) and for a
 * Pi 3 on a future MBR image; its ROM cannot read this GPT disk.
 */
const DTBS: ReadonlyArray<{ name: string; board: string; required: boolean }> = [
  { name: "bcm2711-rpi-4-b.dtb", board: "Raspberry Pi 4 Model B", required: true },
  { name: "bcm2711-rpi-400.dtb", board: "Raspberry Pi 400", required: false },
  { name: "bcm2711-rpi-cm4-io.dtb", board: "Compute Module 4 (IO board)", required: false },
  // Required where the suite boots the Pi 5 (rpiSuite().pi5).
  { name: PI5_DTB, board: "Raspberry Pi 5", required: false },
  { name: "bcm2837-rpi-3-b.dtb", board: "Raspberry Pi 3 Model B (QEMU raspi3b)", required: false },
  { name: "bcm2837-rpi-3-b-plus.dtb", board: "Raspberry Pi 3 Model B+", required: false },
];

/** Everything the RPI profile puts on the ESP besides EFI/BOOT (GRUB) and config.txt. */
export function rpiEspFiles(rpi: RpiSuite): EspFile[] {
  return [
    ...FIRMWARE.map((name) => ({
      source: { from: "raspi-firmware" as const, path: `usr/lib/raspi-firmware/${name}` },
      dest: name,
      required: true,
      board: "Raspberry Pi 4",
    })),
    {
      // rpi_arm64: one 64-bit U-Boot for the Pi 3, 4 and (from 2024.04) 5: it reads the board from the DTB.
      source: { from: "u-boot-rpi", path: "usr/lib/u-boot/rpi_arm64/u-boot.bin" },
      dest: UBOOT_FILE,
      required: true,
      board: "Raspberry Pi 4",
    },
    ...DTBS.map((d) => ({
      source: { from: "kernel-dtbs" as const, path: `broadcom/${d.name}` },
      dest: d.name,
      required: d.required || (rpi.pi5 && d.name === PI5_DTB),
      board: d.board,
    })),
  ];
}

/**
 * config.txt as the Pi firmware reads it. U-Boot's console and the kernel's
 * are the GPIO header's UART (the mini UART, ttyS1 under Debian's kernel):
 * enable_uart=1 pins the core clock its baud rate depends on. Where the suite
 * boots the Pi 5, a [pi5] section follows and the Pi 4 reads the same lines
 * as before (later lines override earlier ones, [pi5] does not match it).
 */
export function rpiConfigTxt(rpi: RpiSuite): string {
  return [
    rpi.pi5
      ? "# EOS, profile RPI: read by the Raspberry Pi 4's firmware (start4.elf) and the Pi 5's EEPROM."
      : "# EOS, profile RPI: read by the Raspberry Pi firmware (start4.elf) from this partition.",
    "# The firmware starts U-Boot; U-Boot's UEFI starts EFI/BOOT/BOOTAA64.EFI (GRUB), whose",
    "# grub.cfg and grubenv choose the A/B slot and count tries (docs/boot-control.md).",
    "[all]",
    "arm_64bit=1",
    `kernel=${UBOOT_FILE}`,
    "enable_uart=1",
    "# Device trees under their upstream names (bcm2711-rpi-4-b.dtb), as Debian's kernel ships them.",
    "upstream_kernel=1",
    "disable_overscan=1",
    ...(rpi.pi5
      ? [
          "# Pi 5: enable_uart=1 lets noise on the unconnected debug UART stop U-Boot's",
          "# autoboot at its prompt; the kernel's console there (ttyAMA10) needs no enable_uart.",
          "[pi5]",
          "enable_uart=0",
          "[all]",
        ]
      : []),
    "",
  ].join("\n");
}

/** The Pi's GPIO header console under Debian's kernel (the mini UART is serial1 in the upstream DTs). */
export const RPI_CONSOLE = "console=ttyS1,115200";

/**
 * The Pi 5's debug UART (the BCM2712's own PL011, serial10 in the upstream
 * DT): its GPIO header UART is behind RP1 on PCIe, which kernel 6.12 lacks.
 */
export const RPI5_CONSOLE = "console=ttyAMA10,115200";

/**
 * The description as the RPI profile builds it: the console moves to the
 * header UART (HDMI gets the kernel's messages too); packages and components
 * are untouched, so the arm64 root comes from the same cache entry as AB.
 */
export function rpiDescription(
  desc: ImageDescription,
  file: string,
): { desc: ImageDescription; notes: string[] } {
  if (desc.partitions.esp < RPI_MIN_ESP)
    throw new EosError(
      "CONFIG",
      `${file}: partitions.esp is ${desc.partitions.esp / 1048576} MiB; the RPI profile's FAT32 ESP needs at least 64 MiB`,
      { hint: "set partitions.esp: 64M" },
    );
  const rpi = rpiSuite(desc.distribution.suite, file);
  const notes: string[] = [];
  // The last console= is /dev/console: systemd's lines and the autologin getty go to the
  // Pi 4's UART. The Pi 5's comes before it: a console the board lacks is skipped, and
  // ttyAMA10 last would take /dev/console away from ttyS1 on the Pi 4.
  const wanted = ["console=tty1", ...(rpi.pi5 ? [RPI5_CONSOLE] : []), RPI_CONSOLE];
  const consoles = desc.kernel.cmdline.filter((w) => w.startsWith("console="));
  const rest = desc.kernel.cmdline.filter((w) => !w.startsWith("console="));
  if (consoles.some((c) => !wanted.includes(c)))
    notes.push(
      `kernel.cmdline's ${consoles.join(" ")} becomes ${wanted.join(" ")} (HDMI, ${rpi.pi5 ? "the Pi 5's debug UART, " : ""}then the GPIO header UART)`,
    );
  return { desc: { ...desc, kernel: { ...desc.kernel, cmdline: [...rest, ...wanted] } }, notes };
}
