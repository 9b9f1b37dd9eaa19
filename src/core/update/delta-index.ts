/**
 * The deltas an update server offers for its current version of an image:
 * for each older root it still has (keyed by that root partition's sha256),
 * one xdelta3 (VCDIFF) file that turns it into the new root. A device uses
 * one only when its running root has that hash, checks the delta's own
 * sha256 before the decoder sees a byte, and trusts the result only when the
 * whole slot then hashes to the signed manifest's root: a delta can make an
 * update cheaper, never let an unverified slot boot.
 */
import { canonicalize } from "../canonical-json.ts";
import { Shape } from "../manifest.ts";

export const DELTA_INDEX_SCHEMA = 1;
/**
 * xdelta3's source window (-B), the same when a delta is made and applied: a
 * device reads its old root from a block device, which xdelta3 treats as not
 * seekable, so a delta may only refer to the old root within the window the
 * decoder keeps (a larger encoder window fails with "non-seekable source").
 * The decoder holds all of it, so it is most of the device's memory for a
 * delta (issue 12 item 6: the apply's peak RSS ≤ 96 MiB). Measured on the
 * demo's pair (file systems of 183 MB, v2 = v1 + a package), -B / delta /
 * decoder peak RSS: 32 MiB / 517 KB / 37 MiB, 16 MiB / 517 KB / 20 MiB,
 * 8 MiB / 517 KB / 12 MiB (with DELTA_TARGET_WINDOW). A package moves the
 * bytes after it by its size; a move beyond the window costs the delta its
 * matches there, and such an update is better served by the chunk path.
 */
export const DELTA_WINDOW = 8 * 1024 * 1024;
/**
 * xdelta3's target window (-W), set when a delta is made: the decoder holds
 * two of them. 1 MiB against the default 8 MiB made the demo's delta 0.7%
 * larger and its decoder 7 MiB smaller.
 */
export const DELTA_TARGET_WINDOW = 1024 * 1024;
/**
 * The delta is held in memory on the device (its hash is checked before the
 * decoder sees a byte), so its size is part of the apply's peak RSS: a bigger
 * one is left to the chunk path, which streams in bounded requests. 8 MiB
 * beside os-update's own 70 MiB and the decoder's 12 MiB (bench/delta on the
 * demo's pair) stays under 96 MiB; a change that large costs the chunk path
 * about as much.
 */
export const MAX_DELTA_BYTES = 8 * 1024 * 1024;

/** The server's encoder: OLD and NEW files to a delta file, in the windows a device decodes with. */
export function xdelta3EncodeArgv(oldRoot: string, newRoot: string, delta: string): string[] {
  return [
    "xdelta3",
    "-e",
    "-9",
    "-f",
    "-B",
    String(DELTA_WINDOW),
    "-W",
    String(DELTA_TARGET_WINDOW),
    "-s",
    oldRoot,
    newRoot,
    delta,
  ];
}

/**
 * The device's decoder: the delta on stdin, the new root on stdout (the
 * target slot itself), the old root a block device. Its memory is the
 * source window and two target windows, whatever the slot's size.
 */
export function xdelta3DecodeArgv(oldRoot: string): string[] {
  return ["xdelta3", "-d", "-c", "-B", String(DELTA_WINDOW), "-s", oldRoot];
}
/**
 * xdelta3: the whole root slot. xdelta3-verity: the file system part of a
 * slot with a dm-verity tree (src/core/verity.ts), from the old slot's file
 * system to the new one's; the device appends the tree it computes.
 */
export const DELTA_ALGORITHMS = ["xdelta3", "xdelta3-verity"] as const;
export type DeltaAlgorithm = (typeof DELTA_ALGORITHMS)[number];

export interface DeltaEntry {
  from_sha256: string;
  from_version: string;
  algorithm: DeltaAlgorithm;
  size: number;
  sha256: string;
}

export interface DeltaIndex {
  schema: typeof DELTA_INDEX_SCHEMA;
  name: string;
  version: string;
  /** The root these deltas produce: the signed manifest's root sha256. */
  to_sha256: string;
  deltas: DeltaEntry[];
}

const SHA256 = /^[0-9a-f]{64}$/;

export function decodeDeltaIndex(bytes: Buffer, source = "delta index"): DeltaIndex {
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString("utf8"));
  } catch (error) {
    throw new Shape("DELTA", source).fail("", `not JSON: ${(error as Error).message}`);
  }
  const s = new Shape("DELTA", source);
  const o = s.object(value, "", ["schema", "name", "version", "to_sha256", "deltas"]);
  if (o.schema !== DELTA_INDEX_SCHEMA) s.fail("schema", `must be ${DELTA_INDEX_SCHEMA}`);
  const deltas = s.list(o.deltas, "deltas", 0).map((d, i): DeltaEntry => {
    const path = `deltas[${i}]`;
    const e = s.object(d, path, ["from_sha256", "from_version", "algorithm", "size", "sha256"]);
    const algorithm = s.string(e.algorithm, `${path}.algorithm`);
    if (!(DELTA_ALGORITHMS as readonly string[]).includes(algorithm))
      s.fail(`${path}.algorithm`, `must be one of ${DELTA_ALGORITHMS.join(", ")}`);
    return {
      from_sha256: s.string(e.from_sha256, `${path}.from_sha256`, SHA256, "must be a sha256 in hex"),
      from_version: s.string(e.from_version, `${path}.from_version`, undefined, undefined, 128),
      algorithm: algorithm as DeltaAlgorithm,
      size: s.count(e.size, `${path}.size`),
      sha256: s.string(e.sha256, `${path}.sha256`, SHA256, "must be a sha256 in hex"),
    };
  });
  return {
    schema: DELTA_INDEX_SCHEMA,
    name: s.string(o.name, "name", undefined, undefined, 128),
    version: s.string(o.version, "version", undefined, undefined, 128),
    to_sha256: s.string(o.to_sha256, "to_sha256", SHA256, "must be a sha256 in hex"),
    deltas,
  };
}

export function encodeDeltaIndex(index: DeltaIndex): Buffer {
  return Buffer.from(`${canonicalize(index)}\n`);
}

/** The delta a device can use: for its running root, producing the root it is about to install. */
export function pickDelta(
  index: DeltaIndex,
  running: { sha256: string | undefined },
  target: { name: string; version: string; sha256: string },
): DeltaEntry | { none: string } {
  if (index.name !== target.name || index.version !== target.version || index.to_sha256 !== target.sha256)
    return { none: `the server's deltas are for ${index.name} ${index.version}, not ${target.version}` };
  if (!running.sha256) return { none: "the running root's sha256 is not recorded" };
  const entry = index.deltas.find((d) => d.from_sha256 === running.sha256);
  return entry ?? { none: `no delta from the running root (${running.sha256.slice(0, 12)}…)` };
}
