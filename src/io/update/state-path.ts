/**
 * Where os-update keeps state between runs (report queue, device token, the
 * running root's chunk list): on the flake registry while it is set up and
 * mounted, so it survives reboots, else in /run for this boot.
 */
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { REGISTRY_MOUNT } from "../../core/registry/registry.ts";
import { sysPath, type Context } from "../context.ts";

/** `file` (relative, e.g. "eos/reports.json") under the device's state directory. */
export async function deviceStatePath(ctx: Context, file: string): Promise<string> {
  // The registry's flakes directory exists only while the registry is set up and mounted.
  const registry = sysPath(ctx, REGISTRY_MOUNT);
  const active = await stat(join(registry, "flakes")).catch(() => undefined);
  return join(active?.isDirectory() ? registry : sysPath(ctx, "/run"), file);
}
