/** The boot control block on the mounted ESP. */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { decodeGrubenv, encodeGrubenv } from "../../core/update/grubenv.ts";
import { EosError } from "../../core/errors.ts";
import { atomicWriteFile } from "../files.ts";

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

/** Replaces the block atomically: GRUB sees the old one or the new one, never a mix. */
export async function writeBootControl(esp: string, vars: Map<string, string>): Promise<void> {
  await atomicWriteFile(grubenvPath(esp), encodeGrubenv(vars));
}
