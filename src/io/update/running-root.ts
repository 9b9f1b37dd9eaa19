/** The identity of the root a device runs: what deltas are keyed by and updates compared with. */
import { mkdir, open, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { ByteRange } from "../../core/gpt.ts";
import { EosError } from "../../core/errors.ts";
import { sysPath, type Context } from "../context.ts";
import { atomicWriteFile } from "../files.ts";
import { hashRange } from "../hash.ts";
import { progress } from "../progress.ts";
import type { Device } from "./updater.ts";

/** Bytes of a slot its identity covers: a root of `size` bytes, or the whole slot when smaller. */
export const identityBytes = (slot: ByteRange, size: number): number => Math.min(size, slot.length);

/**
 * sha256 of the running slot over `size` bytes, computed once per boot: the
 * root is read-only, so its identity cannot change until the next boot.
 */
export async function runningRootHash(ctx: Context, device: Device, size: number): Promise<string> {
  const info = device.layout.slots[device.layout.running];
  if (!info) throw new EosError("SLOT", "running slot not found");
  const length = identityBytes(info.range, size);
  const bootId = (
    await readFile(sysPath(ctx, "/proc/sys/kernel/random/boot_id"), "utf8").catch(() => "")
  ).trim();
  const cacheDir = sysPath(ctx, "/run/os-update");
  const cacheFile = join(cacheDir, `root-${info.partition.uniqueGuid.toLowerCase()}.json`);
  const cacheable = device.layout.online && bootId !== "";
  if (cacheable) {
    let cached: { bootId?: unknown; size?: unknown; sha256?: unknown } = {};
    try {
      cached = JSON.parse(await readFile(cacheFile, "utf8")) as typeof cached;
    } catch {
      // no cache yet, or a broken one: hash again
    }
    if (cached.bootId === bootId && cached.size === length && typeof cached.sha256 === "string")
      return cached.sha256;
  }
  const handle = await open(device.layout.disk, "r");
  let sha256: string;
  try {
    const bar = ctx.interactive
      ? progress(ctx.stderr, `hashing slot ${device.layout.running}`, length, { interactive: true })
      : undefined;
    sha256 = await hashRange(handle, info.range.offset, length, (n) => bar?.add(n));
    bar?.done();
  } finally {
    await handle.close();
  }
  if (cacheable) {
    await mkdir(cacheDir, { recursive: true, mode: 0o755 });
    await atomicWriteFile(cacheFile, JSON.stringify({ bootId, size: length, sha256 }));
  }
  return sha256;
}
