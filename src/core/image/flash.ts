/**
 * `eos flash`: what decides whether a disk may be written. The seed told
 * people to `dd` an image to `/dev/sdX` and warned that the wrong letter
 * wipes the workstation; these rules are that warning turned into refusals.
 * Some refusals no flag lifts (a mounted or busy disk, the running system, a
 * disk too small); `--force` lifts only the one a person can judge: a disk
 * that does not say it is removable.
 */
import { EosError } from "../errors.ts";

/** What the host says about the disk to write, gathered from /sys and /proc. */
export interface FlashTarget {
  /** The path as given, and the kernel's name for it (sdb, loop3, nvme0n1). */
  path: string;
  name: string;
  isBlockDevice: boolean;
  /** A partition of a disk, not a whole disk. */
  isPartition: boolean;
  sizeBytes: number;
  removable: boolean;
  /** Attached over USB (USB sticks and card readers often do not say they are removable). */
  usb: boolean;
  readOnly: boolean;
  /** Vendor and model as the kernel reports them, or what backs a loop device. */
  model: string;
  /** Mount points and swap areas on the disk, its partitions, or anything stacked on them. */
  inUse: string[];
  /** The disk holds the root file system (or /boot, /usr) of the running system. */
  holdsRunningSystem: boolean;
}

export interface FlashRefusal {
  message: string;
  hint: string;
}

/** Why the disk must not be written, or undefined when it may be. */
export function flashRefusal(
  target: FlashTarget,
  imageBytes: number | undefined,
  force: boolean,
): FlashRefusal | undefined {
  const at = target.path;
  if (!target.isBlockDevice)
    return { message: `${at}: not a block device`, hint: "give the whole disk, e.g. /dev/sdb (see lsblk)" };
  if (target.isPartition)
    return {
      message: `${at}: is a partition, not a whole disk`,
      hint: "the image holds its own partition table: give the disk it is on (see lsblk)",
    };
  if (target.holdsRunningSystem)
    return {
      message: `${at}: holds the running system (${target.inUse.join(", ") || "its root"})`,
      hint: "this is the disk this machine runs from; --force does not change that",
    };
  if (target.inUse.length > 0)
    return {
      message: `${at}: in use: ${target.inUse.join(", ")}`,
      hint: "unmount it (and swapoff) first; --force does not change that",
    };
  if (target.readOnly) return { message: `${at}: read-only`, hint: "check the card's write-protect switch" };
  if (imageBytes !== undefined && target.sizeBytes < imageBytes)
    return {
      message: `${at}: ${target.sizeBytes} bytes, smaller than the image (${imageBytes} bytes)`,
      hint: "use a bigger disk",
    };
  if (!target.removable && !target.usb && !force)
    return {
      message: `${at}: not a removable disk (${target.model || "unknown model"})`,
      hint: "if you are sure this is the disk to overwrite, pass --force",
    };
  return undefined;
}

export function refuse(refusal: FlashRefusal): EosError {
  return new EosError("REFUSED", refusal.message, { hint: refusal.hint });
}

/** One mount from /proc/self/mountinfo: the device number and where it is mounted. */
export interface Mount {
  device: string;
  mountPoint: string;
}

/** Parses /proc/self/mountinfo (proc(5)): field 3 is major:minor, field 5 the mount point. */
export function parseMountInfo(text: string): Mount[] {
  const mounts: Mount[] = [];
  for (const line of text.split("\n")) {
    const fields = line.split(" ");
    const device = fields[2];
    const mountPoint = fields[4];
    if (!device || !mountPoint || !/^\d+:\d+$/.test(device)) continue;
    // The kernel escapes space, tab, newline and backslash in paths as octal.
    mounts.push({
      device,
      mountPoint: mountPoint.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))),
    });
  }
  return mounts;
}

/** The swap areas in /proc/swaps that are block devices (their paths). */
export function parseSwaps(text: string): string[] {
  return text
    .split("\n")
    .slice(1)
    .map((line) => line.split(/\s+/))
    .filter((f) => f[1] === "partition" && f[0])
    .map((f) => f[0] as string);
}

/** The mounts that make up the running system: what a flash must never touch. */
// /media/root-ro: where EOS keeps its read-only root slot under the overlay that is "/".
export const SYSTEM_MOUNTS = ["/", "/boot", "/boot/efi", "/usr", "/var", "/media/root-ro"];

/** How the disk is shown before a person confirms. */
export function describeTarget(target: FlashTarget, formatSize: (n: number) => string): string {
  const kind = target.removable || target.usb ? "removable" : "fixed";
  return `${target.path} (${target.name}): ${target.model || "unknown model"}, ${formatSize(target.sizeBytes)}, ${kind}`;
}
