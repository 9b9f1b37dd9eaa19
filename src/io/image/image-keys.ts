/**
 * The public keys an image trusts: release keys (/usr/share/eos/keys, named
 * in the image's os-update.yml) and assignment keys (/usr/share/eos/
 * assignment-keys, which os-update reads by default to accept a signed
 * downgrade: a rollout's abort or a pin). Both come from the description as
 * PEM files; the release keys also from the halves of `--key`.
 */
import { createPrivateKey, createPublicKey } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { basename, isAbsolute, join, resolve } from "node:path";
import { EosError } from "../../core/errors.ts";
import type { ImageDescription } from "../../core/image/description.ts";
import { keyId } from "../../core/manifest.ts";
import { loadPrivateKey, loadPublicKey } from "../keys.ts";
import { DEFAULT_ASSIGNMENT_KEYS } from "../update/assignment.ts";

export const RELEASE_KEYS_DIR = "/usr/share/eos/keys";

/** Name in the key directories: letters, digits and . _ - only. */
const SAFE_FILE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$/;

export interface ImageKeys {
  /** File name in /usr/share/eos/keys → PEM. */
  release: Map<string, string>;
  /** File name in /usr/share/eos/assignment-keys → PEM. */
  assignment: Map<string, string>;
}

interface Named {
  name: string;
  pem: string;
  field: string;
}

async function describedKeys(paths: string[], base: string, field: string): Promise<Map<string, Named>> {
  const byId = new Map<string, Named>();
  for (const [i, rel] of paths.entries()) {
    const path = isAbsolute(rel) ? rel : resolve(base, rel);
    const key = await loadPublicKey(path);
    const name = basename(path).endsWith(".pub") ? basename(path) : `${basename(path)}.pub`;
    byId.set(keyId(key), {
      name,
      pem: key.export({ format: "pem", type: "spki" }).toString(),
      field: `${field}[${i}]`,
    });
  }
  return byId;
}

function byName(keys: Iterable<Named>, what: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const { name, pem, field } of keys) {
    if (!SAFE_FILE.test(name))
      throw new EosError("CONFIG", `${field}: ${what} key file name ${JSON.stringify(name)} is not safe`, {
        hint: "name the file with letters, digits and . _ - only",
      });
    if (out.has(name)) throw new EosError("CONFIG", `${field}: two ${what} keys are both named ${name}`);
    out.set(name, pem);
  }
  return out;
}

export async function imageKeys(
  desc: ImageDescription,
  base: string,
  privateKeys: string[],
): Promise<ImageKeys> {
  const release = await describedKeys(desc.update.keys, base, "update.keys");
  for (const path of privateKeys) {
    await loadPrivateKey(path);
    const pub = createPublicKey(createPrivateKey(await readFile(path)));
    const id = keyId(pub);
    if (!release.has(id))
      release.set(id, {
        name: `release-${id.slice(0, 12)}.pub`,
        pem: pub.export({ format: "pem", type: "spki" }).toString(),
        field: "--key",
      });
  }
  const assignment = await describedKeys(desc.update.assignment_keys, base, "update.assignment_keys");
  // The server holds the assignment key's private half online; were it also a release key, a
  // server that is broken into could sign whole images, not just pick among signed ones.
  for (const [id, key] of assignment)
    if (release.has(id))
      throw new EosError("CONFIG", `${key.field}: ${key.name} is also a release key of this image`, {
        hint: "an assignment key must be its own key (`eos keygen`), never a release key",
      });
  return {
    release: byName(release.values(), "release"),
    assignment: byName(assignment.values(), "assignment"),
  };
}

/** Writes the keys into a root tree (tree + absolute path); no assignment directory without keys. */
export async function writeImageKeys(tree: string, keys: ImageKeys): Promise<void> {
  const dirs: Array<[string, Map<string, string>]> = [
    [RELEASE_KEYS_DIR, keys.release],
    [DEFAULT_ASSIGNMENT_KEYS, keys.assignment],
  ];
  for (const [dir, pems] of dirs) {
    if (pems.size === 0 && dir !== RELEASE_KEYS_DIR) continue;
    const at = join(tree, dir);
    await mkdir(at, { recursive: true });
    for (const [name, pem] of pems) await writeFile(join(at, name), pem, { mode: 0o644 });
  }
}
