/**
 * GRUB environment block (grub-editenv format): exactly 1024 bytes, a header
 * line, `name=value` lines, padded with '#'. GRUB's save_env rewrites it in
 * place, so its size must never change. Values cannot contain newlines.
 */
import { EosError } from "../errors.ts";

export const GRUBENV_SIZE = 1024;
const HEADER = "# GRUB Environment Block\n";

export function decodeGrubenv(block: Buffer, source = "grubenv"): Map<string, string> {
  const text = block.toString("latin1");
  if (!text.startsWith(HEADER)) throw new EosError("BOOT_CONTROL", `${source}: not a GRUB environment block`);
  if (block.length !== GRUBENV_SIZE) {
    throw new EosError(
      "BOOT_CONTROL",
      `${source}: GRUB environment block is ${block.length} bytes, not ${GRUBENV_SIZE}`,
    );
  }
  const vars = new Map<string, string>();
  for (const line of text.slice(HEADER.length).split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const eq = line.indexOf("=");
    if (eq <= 0) continue;
    vars.set(line.slice(0, eq), line.slice(eq + 1).replace(/\\(.)/g, "$1"));
  }
  return vars;
}

export function encodeGrubenv(vars: Map<string, string>): Buffer {
  let body = HEADER;
  for (const [name, value] of [...vars.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name))
      throw new EosError("BOOT_CONTROL", `invalid GRUB variable name ${name}`);
    if (/[\n\\]/.test(value))
      throw new EosError("BOOT_CONTROL", `GRUB variable ${name} has a newline or backslash`);
    // The block is bytes: anything but printable ASCII would not read back as written.
    if (/[^\x20-\x7e]/.test(value))
      throw new EosError("BOOT_CONTROL", `GRUB variable ${name} has characters other than printable ASCII`);
    body += `${name}=${value}\n`;
  }
  if (body.length > GRUBENV_SIZE)
    throw new EosError("BOOT_CONTROL", "boot control variables exceed the 1024-byte block");
  return Buffer.from(body.padEnd(GRUBENV_SIZE, "#"), "latin1");
}
