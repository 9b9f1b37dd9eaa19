/**
 * A ustar writer for the few small files of a container layer that eos build
 * makes itself (the fleet layer): the bytes follow only from the entries,
 * so the layer's digest, and with it the image ID, is reproducible. Owners
 * are always root (0:0), names without user or group names, as a layer
 * built by mmdebstrap has them.
 */
import { EosError } from "./errors.ts";

export interface TarEntry {
  /** Relative path without a leading slash; directories without a trailing one. */
  path: string;
  type: "file" | "dir";
  mode: number;
  content?: Buffer;
}

const BLOCK = 512;

function octal(value: number, width: number): string {
  return `${value.toString(8).padStart(width - 1, "0")}\0`;
}

function header(entry: TarEntry, mtime: number): Buffer {
  const name = entry.type === "dir" ? `${entry.path}/` : entry.path;
  const size = entry.type === "file" ? (entry.content?.length ?? 0) : 0;
  if (Buffer.byteLength(name) > 100)
    throw new EosError("BUILD", `tar entry ${name}: a name over 100 bytes needs ustar's prefix field`);
  const h = Buffer.alloc(BLOCK);
  h.write(name, 0, "utf8");
  h.write(octal(entry.mode & 0o7777, 8), 100, "ascii");
  h.write(octal(0, 8), 108, "ascii");
  h.write(octal(0, 8), 116, "ascii");
  h.write(octal(size, 12), 124, "ascii");
  h.write(octal(mtime, 12), 136, "ascii");
  h.write("        ", 148, "ascii");
  h.write(entry.type === "dir" ? "5" : "0", 156, "ascii");
  h.write("ustar\u000000", 257, "ascii");
  let sum = 0;
  for (const byte of h) sum += byte;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "ascii");
  return h;
}

/** The archive of `entries` in the order given, every mtime `mtime` (seconds), two zero blocks at the end. */
export function tarArchive(entries: TarEntry[], mtime: number): Buffer {
  const parts: Buffer[] = [];
  for (const entry of entries) {
    if (entry.path === "" || entry.path.startsWith("/") || entry.path.split("/").includes(".."))
      throw new EosError(
        "BUILD",
        `tar entry ${JSON.stringify(entry.path)}: must be a relative path inside the archive`,
      );
    parts.push(header(entry, mtime));
    if (entry.type === "file" && entry.content && entry.content.length > 0) {
      parts.push(entry.content);
      const pad = (BLOCK - (entry.content.length % BLOCK)) % BLOCK;
      if (pad > 0) parts.push(Buffer.alloc(pad));
    }
  }
  parts.push(Buffer.alloc(2 * BLOCK));
  return Buffer.concat(parts);
}
