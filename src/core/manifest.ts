/**
 * The signed manifest of an image version: the contract between builder,
 * server and device. The manifest file holds canonical JSON; the detached
 * signature file holds one or more ed25519 signatures over those exact bytes,
 * so a release can be signed by the old and the new key during a rotation.
 * Both documents are checked strictly (every key known, every value in
 * range) by hand: a device decodes one on every check, and a schema library
 * would be most of its start-up time.
 */
import { createHash, createPublicKey, sign, verify, type KeyObject } from "node:crypto";
import { canonicalize } from "./canonical-json.ts";
import { EosError, type ErrorCode } from "./errors.ts";
import { VERITY_BLOCK, type VerityRecord } from "./verity.ts";

export const MANIFEST_SCHEMA = 1;
export const ROOT_LABEL = "p.lxreadonly";
export const ROOT_CLONE_LABEL = "p.lxrootclone1";
export const FIRMWARE_LABEL = "p.UEFI";
export const REGISTRY_LABEL = "p.spare";

export interface ManifestPartition {
  label: string;
  size: number;
  sha256: string;
  /**
   * Bytes from the partition's start up to its zero tail (a 4 KiB multiple, or
   * the size): the stream carries only these, the device writes the zeros
   * itself, and the whole-partition sha256 covers both. Absent: the whole size.
   */
  data_bytes?: number | undefined;
  /** The root's chunk index (src/core/update/chunk-index.ts), signed by its size and sha256. */
  chunk_index?: { size: number; sha256: string } | undefined;
  /** Reserved for delta transfer: fixed-size chunks and their hashes. */
  chunks?: { size: number; sha256: string[] } | undefined;
  /** The slot's dm-verity tree (src/core/verity.ts): what the kernel checks every read against. */
  verity?: VerityRecord | undefined;
}

export interface Manifest {
  schema: typeof MANIFEST_SCHEMA;
  name: string;
  version: string;
  architecture: string;
  created: string;
  partitions: { root: ManifestPartition; firmware?: ManifestPartition | undefined };
}

export interface SignatureDoc {
  signatures: Array<{ keyid: string; sig: string }>;
}

const SHA256 = /^[0-9a-f]{64}$/;
const NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]*$/;
/** Debian-like version strings: they end up in the boot control block, which holds printable ASCII only. */
const VERSION = /^[A-Za-z0-9][A-Za-z0-9._+~:-]*$/;
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$/;

/** Walks a JSON value and fails with the path of the first thing out of shape. */
export class Shape {
  constructor(
    private readonly code: ErrorCode,
    private readonly source: string,
  ) {}

  fail(path: string, message: string): never {
    throw new EosError(this.code, `${this.source}: ${path || "(document)"}: ${message}`);
  }

  object(value: unknown, path: string, required: string[], optional: string[] = []): Record<string, unknown> {
    if (typeof value !== "object" || value === null || Array.isArray(value))
      this.fail(path, "must be an object");
    const obj = value as Record<string, unknown>;
    const at = (k: string) => (path ? `${path}.${k}` : k);
    for (const k of Object.keys(obj))
      if (!required.includes(k) && !optional.includes(k)) this.fail(path, `unknown key "${k}"`);
    for (const k of required) if (!Object.hasOwn(obj, k)) this.fail(at(k), "missing");
    return obj;
  }

  string(value: unknown, path: string, pattern?: RegExp, rule?: string, max = 4096): string {
    if (typeof value !== "string") this.fail(path, "must be a string");
    const s = value as string;
    if (s.length === 0 || s.length > max) this.fail(path, `must be 1 to ${max} characters`);
    if (pattern && !pattern.test(s)) this.fail(path, rule ?? "has an invalid format");
    return s;
  }

  count(value: unknown, path: string): number {
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value <= 0)
      this.fail(path, "must be a positive whole number");
    return value as number;
  }

  list(value: unknown, path: string, min: number): unknown[] {
    if (!Array.isArray(value)) this.fail(path, "must be a list");
    if ((value as unknown[]).length < min) this.fail(path, `must have at least ${min} entries`);
    return value as unknown[];
  }
}

function partitionOf(s: Shape, value: unknown, path: string): ManifestPartition {
  const p = s.object(
    value,
    path,
    ["label", "size", "sha256"],
    ["data_bytes", "chunk_index", "chunks", "verity"],
  );
  const part: ManifestPartition = {
    label: s.string(p.label, `${path}.label`, undefined, undefined, 36),
    size: s.count(p.size, `${path}.size`),
    sha256: s.string(p.sha256, `${path}.sha256`, SHA256, "must be 64 lowercase hex digits"),
  };
  if (p.data_bytes !== undefined) {
    part.data_bytes = s.count(p.data_bytes, `${path}.data_bytes`);
    if (part.data_bytes > part.size) s.fail(`${path}.data_bytes`, "must not exceed size");
  }
  if (p.chunk_index !== undefined) {
    const c = s.object(p.chunk_index, `${path}.chunk_index`, ["size", "sha256"]);
    part.chunk_index = {
      size: s.count(c.size, `${path}.chunk_index.size`),
      sha256: s.string(c.sha256, `${path}.chunk_index.sha256`, SHA256, "must be 64 lowercase hex digits"),
    };
  }
  if (p.chunks !== undefined) {
    const c = s.object(p.chunks, `${path}.chunks`, ["size", "sha256"]);
    part.chunks = {
      size: s.count(c.size, `${path}.chunks.size`),
      sha256: s
        .list(c.sha256, `${path}.chunks.sha256`, 0)
        .map((h, i) => s.string(h, `${path}.chunks.sha256[${i}]`, SHA256, "must be 64 lowercase hex digits")),
    };
  }
  if (p.verity !== undefined) {
    const v = s.object(p.verity, `${path}.verity`, ["algorithm", "data_blocks", "root_hash"]);
    if (v.algorithm !== "sha256") s.fail(`${path}.verity.algorithm`, 'must be "sha256"');
    const dataBlocks = s.count(v.data_blocks, `${path}.verity.data_blocks`);
    if (dataBlocks * VERITY_BLOCK >= part.size)
      s.fail(`${path}.verity.data_blocks`, "must leave room for the tree");
    part.verity = {
      algorithm: "sha256",
      data_blocks: dataBlocks,
      root_hash: s.string(v.root_hash, `${path}.verity.root_hash`, SHA256, "must be 64 lowercase hex digits"),
    };
  }
  return part;
}

/** The manifest in `value`, checked strictly; MANIFEST errors name the field. */
export function checkManifest(value: unknown, source = "manifest"): Manifest {
  const s = new Shape("MANIFEST", source);
  const m = s.object(value, "", ["schema", "name", "version", "architecture", "created", "partitions"]);
  if (m.schema !== MANIFEST_SCHEMA) s.fail("schema", `must be ${MANIFEST_SCHEMA}`);
  const parts = s.object(m.partitions, "partitions", ["root"], ["firmware"]);
  const created = s.string(m.created, "created", ISO_TIME, "must be an ISO 8601 UTC time", 40);
  if (Number.isNaN(Date.parse(created))) s.fail("created", "must be an ISO 8601 UTC time");
  return {
    schema: MANIFEST_SCHEMA,
    name: s.string(m.name, "name", NAME, "letters, digits and . _ + - only", 128),
    version: s.string(m.version, "version", VERSION, "letters, digits and . _ + ~ : - only", 64),
    architecture: s.string(m.architecture, "architecture", NAME, "letters, digits and . _ + - only", 32),
    created,
    partitions: {
      root: partitionOf(s, parts.root, "partitions.root"),
      ...(parts.firmware === undefined
        ? {}
        : { firmware: partitionOf(s, parts.firmware, "partitions.firmware") }),
    },
  };
}

/** Bytes of a partition's stream that a device downloads: up to its zero tail. */
export function streamBytes(part: Pick<ManifestPartition, "size" | "data_bytes">): number {
  return part.data_bytes ?? part.size;
}

export function encodeManifest(manifest: Manifest): Buffer {
  return Buffer.from(canonicalize(checkManifest(manifest)), "utf8");
}

export function decodeManifest(bytes: Buffer, source = "manifest"): Manifest {
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytes.toString("utf8"));
  } catch (error) {
    throw new EosError("MANIFEST", `${source}: not JSON (${(error as Error).message})`);
  }
  const manifest = checkManifest(parsed, source);
  // Compared as bytes: text decoding would hide invalid UTF-8 or a BOM.
  if (!Buffer.from(canonicalize(parsed), "utf8").equals(bytes)) {
    throw new EosError("MANIFEST", `${source}: not in canonical form`, {
      hint: "manifests are written by `eos manifest`; do not edit them by hand",
    });
  }
  return manifest;
}

/** An ed25519 SubjectPublicKeyInfo is this fixed prefix and the raw 32-byte key (RFC 8410). */
const ED25519_SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

/**
 * Stable key id: sha256 over the raw 32-byte ed25519 public key. Read from
 * the DER form, not the JWK: Node 20's JWK export holds the key's mutex while
 * it allocates, and a garbage collection then that finalizes a key-generation
 * job locks the same mutex: the process hangs (seen in CI, gdb: ExportJWKEdKey
 * → GC → ~KeyGenJob → uv_mutex_lock).
 */
export function keyId(publicKey: KeyObject): string {
  const der =
    publicKey.asymmetricKeyType === "ed25519" ? publicKey.export({ format: "der", type: "spki" }) : undefined;
  if (!der || der.length !== 44 || !der.subarray(0, 12).equals(ED25519_SPKI_PREFIX)) {
    throw new EosError("SIGNATURE", "release keys must be ed25519");
  }
  return createHash("sha256").update(der.subarray(12)).digest("hex");
}

export function signManifest(bytes: Buffer, privateKeys: KeyObject[]): SignatureDoc {
  return {
    signatures: privateKeys.map((key) => ({
      keyid: keyId(createPublicKey(key)),
      sig: sign(null, bytes, key).toString("base64"),
    })),
  };
}

export function encodeSignatures(doc: SignatureDoc): Buffer {
  return Buffer.from(canonicalize(doc), "utf8");
}

export function decodeSignatures(bytes: Buffer, source = "signature"): SignatureDoc {
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytes.toString("utf8"));
  } catch (error) {
    throw new EosError("SIGNATURE", `${source}: not JSON (${(error as Error).message})`);
  }
  const s = new Shape("SIGNATURE", source);
  const doc = s.object(parsed, "", ["signatures"]);
  const signatures = s.list(doc.signatures, "signatures", 1).map((entry, i) => {
    const e = s.object(entry, `signatures[${i}]`, ["keyid", "sig"]);
    return {
      keyid: s.string(e.keyid, `signatures[${i}].keyid`, SHA256, "must be 64 lowercase hex digits"),
      sig: s.string(e.sig, `signatures[${i}].sig`, undefined, undefined, 1024),
    };
  });
  return { signatures };
}

/**
 * Verifies that at least one signature is by a trusted key and returns that
 * key's id. Signatures by unknown keys are ignored (they may belong to a key
 * this device does not trust yet); one valid trusted signature suffices.
 */
export function verifyManifestSignature(bytes: Buffer, doc: SignatureDoc, trusted: KeyObject[]): string {
  if (trusted.length === 0) {
    throw new EosError("SIGNATURE", "no trusted release keys configured", { hint: "configure `keys:`" });
  }
  const byId = new Map(trusted.map((k) => [keyId(k), k]));
  let knownButBad = false;
  for (const { keyid, sig } of doc.signatures) {
    const key = byId.get(keyid);
    if (!key) continue;
    if (verify(null, bytes, key, Buffer.from(sig, "base64"))) return keyid;
    knownButBad = true;
  }
  throw new EosError(
    "SIGNATURE",
    knownButBad
      ? "manifest signature does not verify: the manifest was altered after signing"
      : `manifest is not signed by a trusted key (signed by ${doc.signatures.map((s) => s.keyid.slice(0, 16)).join(", ")})`,
    { hint: "check the release keys the device or server trusts" },
  );
}

/**
 * Orders version strings the way people number releases: dot/dash separated
 * segments, numeric segments compared as numbers ("1.10" > "1.9").
 */
export function compareVersions(a: string, b: string): number {
  const split = (v: string) => v.split(/[.\-+~_]/);
  const pa = split(a);
  const pb = split(b);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i];
    const y = pb[i];
    if (x === undefined) return -1;
    if (y === undefined) return 1;
    const nx = /^\d+$/.test(x) ? Number(x) : NaN;
    const ny = /^\d+$/.test(y) ? Number(y) : NaN;
    if (!Number.isNaN(nx) && !Number.isNaN(ny)) {
      if (nx !== ny) return nx < ny ? -1 : 1;
    } else if (x !== y) {
      return x < y ? -1 : 1;
    }
  }
  return 0;
}
