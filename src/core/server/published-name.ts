/**
 * Which signed manifests the update server publishes under which name: a
 * device following a name must only ever be offered its own image.
 */
import { EosError } from "../errors.ts";
import type { Manifest } from "../manifest.ts";

const ARCH_TOKENS = ["x86_64", "aarch64", "armv7l", "riscv64", "i686", "ppc64le", "s390x"];

/**
 * May the server publish `manifest` under `published`? The name is the
 * manifest's, or the manifest's followed by `-CHANNEL` (the seed publishes
 * EOS.aarch64-RPI as EOS.aarch64-RPI-TW); an architecture the name spells
 * out must be the manifest's.
 */
export function checkPublishedName(published: string, manifest: Manifest): void {
  const named = published === manifest.name || published.startsWith(`${manifest.name}-`);
  if (!named) {
    throw new EosError(
      "REFUSED",
      `${published}: the signed manifest is for image ${manifest.name}; publishing it as ${published} would offer it to devices of another image`,
      { hint: `publish it as ${manifest.name} (or ${manifest.name}-CHANNEL)` },
    );
  }
  const spelled = ARCH_TOKENS.filter((a) => new RegExp(`(^|[._-])${a}([._-]|$)`).test(published));
  if (spelled.length > 0 && !spelled.includes(manifest.architecture)) {
    throw new EosError(
      "REFUSED",
      `${published}: the name says ${spelled.join("/")}, but the signed manifest is built for ${manifest.architecture}`,
    );
  }
}

/**
 * `fetch --image X`: X is a configured image's name (`NAME` or `NAME.raw`),
 * or, as the original os-update-daemon's `--image PATH`, a path whose last
 * part is one (`/srv/www/fleet/os-images/NAME.raw`, also `….raw.xz`), or the
 * image's origin URL. Returns the configured name, or undefined.
 */
export function matchConfiguredImage(
  wanted: string,
  images: ReadonlyArray<{ name: string; image: string }>,
): string | undefined {
  const byUrl = images.find((i) => i.image === wanted);
  if (byUrl) return byUrl.name;
  const last = wanted.split("/").filter(Boolean).pop() ?? wanted;
  const name = last.replace(/\.raw(\.(dev|firmware|xz|sha))?$/, "");
  return images.find((i) => i.name === name || i.name === last)?.name;
}

/** A string as a systemd unit instance: characters other than [A-Za-z0-9:_.-] as \xNN (systemd-escape). */
export function escapeUnitInstance(text: string): string {
  return text.replace(/[^A-Za-z0-9:_.-]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

/** The timer that refreshes a published image (the original's os-update-daemon@NAME.timer). */
export function fetchTimerUnit(name: string): string {
  return `os-update-daemon@${escapeUnitInstance(name)}.timer`;
}
