/**
 * Where the project's own files are when `eos build` runs: the checkout's
 * dist/ bundles and systemd/ units, or where the .deb installs them.
 */
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { EosError } from "../../core/errors.ts";

/** The checkout this code runs from (works from src/ under tsx and from dist/*.mjs). */
export function repoRoot(): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "src"))) return dir;
    dir = dirname(dir);
  }
  return undefined;
}

/** The checkout's dist/, where `npm run build` puts the command bundles. */
export function defaultDistDir(): string | undefined {
  const root = repoRoot();
  return root && existsSync(join(root, "dist")) ? join(root, "dist") : undefined;
}

/** What `systemctl start os-fetch` and `os-update-server serve` need on a server image, as the package ships them. */
const SERVER_UNITS = [
  "os-fetch.service",
  "os-update-daemon@.service",
  "os-update-daemon@.timer",
  "os-update-fetchd.service",
  "os-update-server.service",
];

/**
 * A unit file as the project ships it (systemd/ in a checkout, or where the
 * package installs them): the one source an image's copy is made from.
 */
export async function projectUnit(name: string): Promise<string> {
  const root = repoRoot();
  // The .deb (scripts/package.mjs) installs them, not enabled, in /usr/lib/systemd/system.
  const places = [
    ...(root ? [join(root, "systemd", name)] : []),
    join("/usr/share/eos/systemd", name),
    join("/usr/lib/systemd/system", name),
  ];
  for (const place of places) {
    const text = await readFile(place, "utf8").catch(() => undefined);
    if (text !== undefined) return text;
  }
  throw new EosError("BUILD", `the unit ${name} is missing (looked in ${places.join(", ")})`, {
    hint: "run eos build from a checkout or an installed eos package",
  });
}

/** The update server's units, file name → text. */
export async function projectServerUnits(): Promise<Map<string, string>> {
  const units = new Map<string, string>();
  for (const name of SERVER_UNITS) units.set(name, await projectUnit(name));
  return units;
}
