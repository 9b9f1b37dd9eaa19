/** The boot control block on the mounted ESP. */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { decodeGrubenv, encodeGrubenv } from "../../core/update/grubenv.ts";
import { EosError } from "../../core/errors.ts";
import { crashPoint } from "../crash-point.ts";
import { atomicWriteFile, removeStaleTemps } from "../files.ts";

export const GRUBENV_PATH = "EFI/BOOT/grubenv";

export function grubenvPath(esp: string): string {
  return join(esp, GRUBENV_PATH);
}

export async function readBootControl(esp: string): Promise<Map<string, string>> {
  const path = grubenvPath(esp);
  let block: Buffer;
  try {
    block = await readFile(path);
  } catch {
    throw new EosError("BOOT_CONTROL", `${path}: no boot control block`, {
      hint: "is the ESP mounted there? pass --esp PATH",
    });
  }
  return decodeGrubenv(block, path);
}

/** Which transaction writes the block (names its crash point). */
export type BootControlWrite = "apply:invalidate" | "apply:trial" | "commit" | "confirm" | "rollback";

/**
 * Replaces the block atomically: GRUB sees the old one or the new one, never
 * a mix. A temp block that a killed os-update left on the ESP goes first
 * (every writer holds the update lock).
 */
export async function writeBootControl(
  esp: string,
  vars: Map<string, string>,
  step?: BootControlWrite,
): Promise<void> {
  await removeStaleTemps(grubenvPath(esp));
  await atomicWriteFile(grubenvPath(esp), encodeGrubenv(vars), 0o644, {
    beforeRename: () => step && crashPoint(`${step}:before-rename`),
  });
}
