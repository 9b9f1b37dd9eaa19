/**
 * A signed assignment: the update server's word that this one device may
 * install this one older version (a rollout was aborted, or an operator
 * pinned it). A device never installs an older version because a response
 * says so: the permission is an ed25519 signature by an assignment key the
 * device trusts (not a release key: it cannot sign images), over a document
 * bound to
 *   - the device's own credential (sha256 of its bearer token), so it is
 *     useless to any other device;
 *   - the exact root it goes from and the exact root it goes to, so it
 *     cannot be replayed once the device moved on, nor point at other bytes;
 *   - an expiry, so an old one captured on the wire does not keep working.
 * The release signature on the manifest is checked as always; this only
 * lifts the "must be newer" rule for that manifest.
 */
import { createHash, createPublicKey, sign, verify, type KeyObject } from "node:crypto";
import { canonicalize } from "../canonical-json.ts";
import { EosError } from "../errors.ts";
import { keyId, type Manifest, type SignatureDoc } from "../manifest.ts";

export interface AssignmentPayload {
  kind: "eos-downgrade-assignment";
  image: string;
  version: string;
  /** Root sha256 of the version assigned. */
  sha256: string;
  /** Root sha256 the device must be running for this to apply. */
  from_sha256: string;
  /** sha256 (hex) of the device's bearer token. */
  device_token_sha256: string;
  /** Why: `abort ROLLOUT` or `pin`. For logs. */
  reason: string;
  expires: string;
}

export interface SignedAssignment extends SignatureDoc {
  assignment: AssignmentPayload;
}

/** How long an assignment stays good: a device checks far more often than this. */
export const ASSIGNMENT_LIFETIME_MS = 24 * 3600 * 1000;

export const tokenDigest = (token: string) => createHash("sha256").update(token, "utf8").digest("hex");

export function signAssignment(payload: AssignmentPayload, key: KeyObject): SignedAssignment {
  const bytes = Buffer.from(canonicalize(payload), "utf8");
  return {
    assignment: payload,
    signatures: [{ keyid: keyId(createPublicKey(key)), sig: sign(null, bytes, key).toString("base64") }],
  };
}

function refuse(message: string): EosError {
  return new EosError("DOWNGRADE", `the server's assignment does not allow this downgrade: ${message}`, {
    hint: "a downgrade needs an assignment signed by a key in update.assignment_keys, or --allow-downgrade",
  });
}

/**
 * Checks that `doc` (untrusted JSON from the server) allows this device to
 * install `manifest` over the root it runs. Throws DOWNGRADE saying why not.
 */
export function checkAssignment(
  doc: unknown,
  trusted: readonly KeyObject[],
  want: { manifest: Manifest; runningSha256: string; token: string | undefined; now: Date },
): AssignmentPayload {
  if (trusted.length === 0) throw refuse("this device trusts no assignment key");
  if (want.token === undefined) throw refuse("this device has no token to bind it to");
  const d = doc as Partial<SignedAssignment> | null;
  const a = d?.assignment;
  if (typeof a !== "object" || a === null || !Array.isArray(d?.signatures)) throw refuse("not an assignment");
  let bytes: Buffer;
  try {
    bytes = Buffer.from(canonicalize(a), "utf8");
  } catch {
    throw refuse("not an assignment");
  }
  const byId = new Map(trusted.map((k) => [keyId(k), k]));
  const signed = d.signatures.some((s) => {
    const key = typeof s?.keyid === "string" ? byId.get(s.keyid) : undefined;
    return (
      key !== undefined && typeof s.sig === "string" && verify(null, bytes, key, Buffer.from(s.sig, "base64"))
    );
  });
  if (!signed) throw refuse("not signed by a trusted assignment key");
  const m = want.manifest;
  if (a.kind !== "eos-downgrade-assignment") throw refuse("not a downgrade assignment");
  if (a.image !== m.name || a.version !== m.version || a.sha256 !== m.partitions.root.sha256)
    throw refuse(`it is for ${String(a.image)} ${String(a.version)}, not the offered ${m.name} ${m.version}`);
  if (a.from_sha256 !== want.runningSha256) throw refuse("it is for a device running another root");
  if (a.device_token_sha256 !== tokenDigest(want.token)) throw refuse("it is for another device");
  if (!(Date.parse(a.expires) > want.now.getTime())) throw refuse(`it expired at ${String(a.expires)}`);
  return a;
}
