/**
 * What this device is, as its manifests name it: the image and the
 * architecture. The running system says it in /etc/eos/image (in its
 * verified, read-only root); a disk os-update acts on offline says it in its
 * boot control block. Images made before either existed fall back to the
 * configured image name and this machine's architecture.
 */
import { readFile } from "node:fs/promises";
import type { DeviceIdentity } from "../../core/update/acceptance.ts";
import { sysPath, type Context } from "../context.ts";
import { hostArchitecture } from "../release.ts";

export const IMAGE_INFO = "/etc/eos/image";

function keyValues(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split("\n")) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line.trim());
    if (m) out.set(m[1] as string, (m[2] as string).replace(/^"(.*)"$/, "$1"));
  }
  return out;
}

export async function deviceIdentity(
  ctx: Context,
  options: { online: boolean; bootVars: Map<string, string> | undefined; configuredName: string },
): Promise<DeviceIdentity> {
  if (options.online) {
    const text = await readFile(sysPath(ctx, IMAGE_INFO), "utf8").catch(() => undefined);
    const info = text === undefined ? undefined : keyValues(text);
    const image = info?.get("NAME");
    if (image) return { image, architecture: info?.get("ARCH") || hostArchitecture(), source: IMAGE_INFO };
  }
  const image = options.bootVars?.get("eos_image");
  const architecture = options.bootVars?.get("eos_arch");
  if (image && architecture) return { image, architecture, source: "the disk's boot control block" };
  return {
    image: options.configuredName,
    architecture: hostArchitecture(),
    source: "update.name in os-update.yml and this machine",
  };
}
