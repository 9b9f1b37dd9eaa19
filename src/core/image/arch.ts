/**
 * What differs between the architectures EOS builds for: Debian's name for
 * it, the kernel package, the GPT type of the root slots, GRUB's EFI target
 * and the removable-media path the firmware starts, the QEMU machine, and
 * how the root's initramfs is made. Everything else (disk contract, grubenv
 * boot control, manifests) is the same on every architecture.
 */
import { EosError } from "../errors.ts";
import { PartitionType } from "../gpt.ts";

export const ARCHITECTURES = ["x86_64", "aarch64"] as const;
export type Architecture = (typeof ARCHITECTURES)[number];

export interface ArchProfile {
  /** Debian's architecture name (mmdebstrap --architectures, .deb file names). */
  debian: string;
  /** The kernel every root of this architecture carries. */
  kernelPackage: string;
  /** Packages the architecture's build recipe needs in the root on top of the description's. */
  extraPackages: readonly string[];
  /** GPT type of p.lxreadonly and p.lxrootclone1 (Discoverable Partitions: "Linux root (<arch>)"). */
  rootPartitionType: string;
  /** grub-mkimage -O. */
  grubTarget: string;
  /** Debian package holding GRUB's modules for grubTarget. */
  grubPackage: string;
  /** Removable-media boot path in EFI/BOOT the firmware starts without EFI variables. */
  efiBinary: string;
  /**
   * Run update-initramfs once, after mmdebstrap, instead of at every kernel or
   * initramfs-tools trigger: under qemu-user every emulated exec costs ~80 ms
   * and each mkinitramfs run with Debian's MODULES=most took ~29 min here.
   */
  deferInitramfs: boolean;
  /**
   * initramfs-tools MODULES= policy. "list" takes /etc/initramfs-tools/modules
   * as the whole set (plus dependencies): 157 s and 6 MB instead of 1748 s and
   * 36 MB for arm64 under emulation. undefined keeps Debian's default (most).
   */
  initramfsModulesPolicy: "list" | undefined;
  /** Modules the initramfs needs to find the root slot on this architecture's machines. */
  initramfsModules: readonly string[];
  /** The kernel's serial console on this architecture's QEMU machine. */
  serialConsole: string;
}

export const ARCH_PROFILES: Record<Architecture, ArchProfile> = {
  x86_64: {
    debian: "amd64",
    kernelPackage: "linux-image-cloud-amd64",
    extraPackages: [],
    rootPartitionType: PartitionType.linuxRootX86_64,
    grubTarget: "x86_64-efi",
    grubPackage: "grub-efi-amd64-bin",
    efiBinary: "BOOTX64.EFI",
    deferInitramfs: false,
    initramfsModulesPolicy: undefined,
    initramfsModules: [],
    serialConsole: "ttyS0",
  },
  aarch64: {
    debian: "arm64",
    kernelPackage: "linux-image-arm64",
    // Without zstd in the root (no Recommends) mkinitramfs falls back to gzip: larger and slower.
    extraPackages: ["zstd"],
    rootPartitionType: PartitionType.linuxRootArm64,
    grubTarget: "arm64-efi",
    grubPackage: "grub-efi-arm64-bin",
    efiBinary: "BOOTAA64.EFI",
    deferInitramfs: true,
    initramfsModulesPolicy: "list",
    // QEMU virt and generic UEFI machines, then the Raspberry Pi 3/4/5 boot media
    // (modules a kernel lacks are skipped), then USB boot. MMC core and the
    // PL011 are built into Debian's arm64 kernel.
    initramfsModules: [
      "virtio_pci",
      "virtio_mmio",
      "virtio_blk",
      "virtio_scsi",
      "sd_mod",
      "nvme",
      "sdhci_iproc",
      "sdhci_brcmstb",
      "bcm2835",
      "xhci_pci",
      "xhci_plat_hcd",
      "reset_raspberrypi",
      "dwc2",
      "usb_storage",
      "uas",
      "vfat",
      "nls_cp437",
      "nls_ascii",
    ],
    serialConsole: "ttyAMA0",
  },
};

export function isArchitecture(value: string): value is Architecture {
  return (ARCHITECTURES as readonly string[]).includes(value);
}

/** `--arch` (or a manifest's architecture) as given; `what` names the argument in the error. */
export function parseArchitecture(value: string, what = "--arch"): Architecture {
  if (isArchitecture(value)) return value;
  const aliases: Record<string, Architecture> = { amd64: "x86_64", arm64: "aarch64" };
  const alias = aliases[value];
  throw new EosError(
    "USAGE",
    `${what} ${value}: EOS builds for ${ARCHITECTURES.join(" or ")}${alias ? ` (Debian's ${value} is ${alias})` : ""}`,
    { hint: `pass ${what} ${alias ?? "x86_64"}` },
  );
}

/** The architecture of the machine Node runs on, as manifests name it (undefined: one EOS does not build). */
export function hostArchitecture(nodeArch: string): Architecture | undefined {
  return nodeArch === "x64" ? "x86_64" : nodeArch === "arm64" ? "aarch64" : undefined;
}

/** The architecture whose root slots carry this GPT type (what an EOS disk says it is for). */
export function architectureOfRootType(typeGuid: string): Architecture | undefined {
  return ARCHITECTURES.find((a) => ARCH_PROFILES[a].rootPartitionType === typeGuid.toUpperCase());
}
