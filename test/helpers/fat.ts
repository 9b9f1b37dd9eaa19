/**
 * fsck.fat -n on a FAT image as a clean unmount would have left it: Linux
 * sets the volume's dirty flag while it is mounted, so every power cut leaves
 * it set, and fsck.fat reports it as a problem. Everything else it reports is
 * damage.
 */
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";

/** The boot sector's state byte that Linux's vfat uses as its dirty flag (bit 0). */
function stateOffset(bootSector: Buffer): number {
  // FAT32 has no 16-bit sectors-per-FAT count: its extended BPB, and the state byte, sit later.
  return bootSector.readUInt16LE(0x16) === 0 ? 0x41 : 0x25;
}

export interface FsckResult {
  clean: boolean;
  report: string;
}

/** Checks a FAT image file (changed in place: the dirty flag cleared) with fsck.fat -n. */
export function fsckFat(image: string): FsckResult {
  const bytes = readFileSync(image);
  const at = stateOffset(bytes);
  bytes[at] = (bytes[at] ?? 0) & ~1;
  writeFileSync(image, bytes);
  const r = spawnSync("fsck.fat", ["-n", image], { encoding: "utf8" });
  return { clean: r.status === 0, report: `${r.stdout ?? ""}${r.stderr ?? ""}`.trim() };
}
