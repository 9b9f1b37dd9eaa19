/**
 * Which signed manifests a device accepts. A signature only says that the
 * release key made it; the device must also be what the manifest was made
 * for: the same image (product), its own architecture, and a newer version.
 * All of it is decided before a byte is written.
 */
import { EosError } from "../errors.ts";
import { compareVersions, type Manifest } from "../manifest.ts";

export interface DeviceIdentity {
  /** The image this device runs, as its manifests name it (e.g. EOS.x86_64-AB). */
  image: string;
  architecture: string;
  /** Where the identity came from, for messages. */
  source: string;
}

export interface RunningRoot {
  version: string | undefined;
  sha256: string;
}

export type Offer =
  | { kind: "up-to-date" }
  | { kind: "update" }
  /** Older than (or as old as) the running version: installed only when allowed. */
  | { kind: "not-newer"; running: string };

/** Refuses a manifest made for another image or architecture. */
export function checkMadeFor(manifest: Manifest, device: DeviceIdentity): void {
  if (manifest.name !== device.image) {
    throw new EosError(
      "REFUSED",
      `the server's manifest is for image ${manifest.name}, but this device runs ${device.image} (${device.source})`,
      { hint: "update.name in /etc/os-update.yml names the published image this device follows; check it" },
    );
  }
  if (manifest.architecture !== device.architecture) {
    throw new EosError(
      "REFUSED",
      `the server's ${manifest.name} ${manifest.version} is built for ${manifest.architecture}, this device is ${device.architecture}`,
      { hint: "the server publishes another architecture under this name" },
    );
  }
}

/** What a manifest made for this device offers it: nothing new, an update, or an older (or same) version. */
export function judgeOffer(manifest: Manifest, device: DeviceIdentity, running: RunningRoot): Offer {
  checkMadeFor(manifest, device);
  if (manifest.partitions.root.sha256 === running.sha256) return { kind: "up-to-date" };
  if (running.version !== undefined && compareVersions(manifest.version, running.version) <= 0)
    return { kind: "not-newer", running: running.version };
  return { kind: "update" };
}
