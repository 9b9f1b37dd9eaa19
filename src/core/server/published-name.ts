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
