/**
 * The signed manifest of an image version: the contract between builder,
 * server and device. The manifest file holds canonical JSON; the detached
 * signature file holds one or more ed25519 signatures over those exact bytes,
 * so a release can be signed by the old and the new key during a rotation.
 */
import { createHash, createPublicKey, sign, verify, type KeyObject } from "node:crypto";
import { z } from "zod";
import { canonicalize } from "./canonical-json.ts";
import { EosError } from "./errors.ts";

export const MANIFEST_SCHEMA = 1;
export const ROOT_LABEL = "p.lxreadonly";
export const ROOT_CLONE_LABEL = "p.lxrootclone1";
export const FIRMWARE_LABEL = "p.UEFI";
export const REGISTRY_LABEL = "p.spare";

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, "must be 64 lowercase hex digits");

const partitionSchema = z.strictObject({
  label: z.string().min(1),
  size: z.number().int().positive(),
  sha256: sha256Hex,
  /** Reserved for delta transfer: fixed-size chunks and their hashes. */
  chunks: z.strictObject({ size: z.number().int().positive(), sha256: z.array(sha256Hex) }).optional(),
});

export const manifestSchema = z.strictObject({
  schema: z.literal(MANIFEST_SCHEMA),
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._+-]*$/, "letters, digits and . _ + - only"),
  version: z.string().min(1).max(64),
  architecture: z.string().min(1),
  created: z.string().datetime(),
  partitions: z.strictObject({ root: partitionSchema, firmware: partitionSchema.optional() }),
});

export type Manifest = z.infer<typeof manifestSchema>;
export type ManifestPartition = z.infer<typeof partitionSchema>;

const signatureDocSchema = z.strictObject({
  signatures: z
    .array(z.strictObject({ keyid: z.string().regex(/^[0-9a-f]{64}$/), sig: z.string().min(1) }))
    .min(1),
});
export type SignatureDoc = z.infer<typeof signatureDocSchema>;

function issues(error: z.ZodError): string {
  return error.issues.map((i) => `${i.path.join(".") || "(document)"}: ${i.message}`).join("; ");
}

export function encodeManifest(manifest: Manifest): Buffer {
  return Buffer.from(canonicalize(manifestSchema.parse(manifest)), "utf8");
}

export function decodeManifest(bytes: Buffer, source = "manifest"): Manifest {
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytes.toString("utf8"));
  } catch (error) {
    throw new EosError("MANIFEST", `${source}: not JSON (${(error as Error).message})`);
  }
  const result = manifestSchema.safeParse(parsed);
  if (!result.success) throw new EosError("MANIFEST", `${source}: ${issues(result.error)}`);
  // Compared as bytes: text decoding would hide invalid UTF-8 or a BOM.
  if (!Buffer.from(canonicalize(parsed), "utf8").equals(bytes)) {
    throw new EosError("MANIFEST", `${source}: not in canonical form`, {
      hint: "manifests are written by `eos manifest`; do not edit them by hand",
    });
  }
  return result.data;
}

/** Stable key id: sha256 over the raw 32-byte ed25519 public key. */
export function keyId(publicKey: KeyObject): string {
  const jwk = publicKey.export({ format: "jwk" });
  if (jwk.kty !== "OKP" || jwk.crv !== "Ed25519" || typeof jwk.x !== "string") {
    throw new EosError("SIGNATURE", "release keys must be ed25519");
  }
  return createHash("sha256").update(Buffer.from(jwk.x, "base64url")).digest("hex");
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
  const result = signatureDocSchema.safeParse(parsed);
  if (!result.success) throw new EosError("SIGNATURE", `${source}: ${issues(result.error)}`);
  return result.data;
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
