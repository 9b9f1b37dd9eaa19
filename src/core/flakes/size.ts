/**
 * Sizes as flake files and `--overlay-size` write them: `20GiB`, `20g`,
 * `512MiB`, `1.5G`, `4096` (bytes). A suffix with or without `i`/`B` is
 * binary (K = 1024) except the explicit decimal units `KB`, `MB`, `GB`,
 * `TB` (powers of 1000), so `20g` and `20GiB` are the same size.
 */
import { EosError } from "../errors.ts";

const BINARY: Record<string, number> = { "": 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };
const DECIMAL: Record<string, number> = { k: 1e3, m: 1e6, g: 1e9, t: 1e12 };

/** Smallest overlay that still holds an ext4 file system with a journal. */
export const MIN_OVERLAY_BYTES = 16 * 2 ** 20;
export const MAX_OVERLAY_BYTES = 16 * 2 ** 40;

/** Bytes, or undefined when `text` is not a size. */
export function parseSizeOrUndefined(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(?:([kmgtKMGT])(i?)([bB]?))?\s*$/.exec(text);
  if (!m) return undefined;
  const value = Number(m[1]);
  const unit = (m[2] ?? "").toLowerCase();
  const decimal = unit !== "" && m[3] === "" && m[4] === "B";
  const factor = decimal ? DECIMAL[unit] : BINARY[unit];
  if (factor === undefined) return undefined;
  const bytes = Math.round(value * factor);
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

/** Parses a size; errors name `what` (e.g. `--overlay-size` or `file: vm.runtime.firecracker.overlay_size`). */
export function parseSize(text: string, what: string): number {
  const bytes = parseSizeOrUndefined(text);
  if (bytes === undefined) {
    throw new EosError("USAGE", `${what} ${JSON.stringify(text)} is not a size`, {
      hint: "write a number with an optional unit: 20GiB, 20g, 512MiB, 1.5G (K/M/G/T are 1024-based, KB/MB/GB/TB 1000-based)",
    });
  }
  return bytes;
}

/** An overlay size: parsed and within sensible bounds. */
export function parseOverlaySize(text: string, what: string): number {
  const bytes = parseSize(text, what);
  if (bytes < MIN_OVERLAY_BYTES || bytes > MAX_OVERLAY_BYTES) {
    throw new EosError(
      "USAGE",
      `${what} ${JSON.stringify(text)} is ${bytes} bytes: an overlay must be between 16MiB and 16TiB`,
    );
  }
  return bytes;
}

export function formatSize(bytes: number): string {
  for (const [unit, factor] of [
    ["TiB", 2 ** 40],
    ["GiB", 2 ** 30],
    ["MiB", 2 ** 20],
    ["KiB", 2 ** 10],
  ] as const) {
    if (bytes >= factor && bytes % factor === 0) return `${bytes / factor}${unit}`;
  }
  return String(bytes);
}
