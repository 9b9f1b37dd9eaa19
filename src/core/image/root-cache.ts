/**
 * The key of a cached base root: the tree mmdebstrap leaves (before anything
 * EOS-specific), which is the same for every build with the same inputs. The
 * key is the sha256 of the canonical JSON of exactly those inputs, so a
 * changed package list, mirror, suite, architecture, recipe or archive state
 * builds a new root and nothing else does.
 */
import { createHash } from "node:crypto";
import { canonicalize } from "../canonical-json.ts";
import type { Architecture } from "./arch.ts";
import { packageList, type ImageDescription } from "./description.ts";

/**
 * Bump when what the base root is made of changes without its inputs
 * changing: mmdebstrap options, hooks, the initramfs deferral.
 */
export const BASE_ROOT_RECIPE = "eos-base-root/1";

export interface BaseRootInputs {
  recipe: string;
  architecture: Architecture;
  suite: string;
  mirror: string;
  components: string[];
  /** packageList(desc, architecture): sorted, the architecture's kernel included. */
  packages: string[];
  /**
   * The archive state: sha256 of each index file mmdebstrap resolves against
   * (dists/SUITE/InRelease). A point release or security fix in the suite
   * changes it; a description that did not change then still gets new packages.
   */
  archive: Record<string, string>;
  /**
   * mmdebstrap and the maintainer scripts read SOURCE_DATE_EPOCH, and not
   * only for mtimes (which mksquashfs resets): e.g. shadow's last-change day
   * of the system users. A root made for another epoch is another root.
   */
  sourceDateEpoch: number;
}

export function baseRootInputs(
  desc: ImageDescription,
  architecture: Architecture,
  archive: Record<string, string>,
  sourceDateEpoch: number,
): BaseRootInputs {
  return {
    recipe: BASE_ROOT_RECIPE,
    architecture,
    suite: desc.distribution.suite,
    // A trailing slash names the same archive.
    mirror: desc.distribution.mirror.replace(/\/+$/, ""),
    components: [...desc.distribution.components],
    packages: packageList(desc, architecture),
    archive: { ...archive },
    sourceDateEpoch,
  };
}

export function baseRootKey(inputs: BaseRootInputs): string {
  return createHash("sha256").update(canonicalize(inputs)).digest("hex");
}

/** The cache directory's entry name: readable first, then enough of the key. */
export function baseRootEntryName(inputs: BaseRootInputs, key: string): string {
  return `${inputs.architecture}-${inputs.suite}-${key.slice(0, 24)}`;
}

/** The index files whose hashes make up BaseRootInputs.archive. */
export function archiveIndexPaths(suite: string): string[] {
  return [`dists/${suite}/InRelease`];
}
