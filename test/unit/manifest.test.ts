import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, createPublicKey, generateKeyPairSync, type KeyObject } from "node:crypto";
import {
  compareVersions,
  decodeManifest,
  decodeSignatures,
  encodeManifest,
  encodeSignatures,
  keyId,
  signManifest,
  verifyManifestSignature,
  type Manifest,
  type SignatureDoc,
} from "../../src/core/manifest.ts";
import { canonicalize } from "../../src/core/canonical-json.ts";
import { EosError } from "../../src/core/errors.ts";

function keyPair(): { priv: KeyObject; pub: KeyObject } {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  return { priv: privateKey, pub: publicKey };
}

const release = keyPair();
const next = keyPair();
const stranger = keyPair();

const manifest: Manifest = {
  schema: 1,
  name: "EOS.x86_64-AB",
  version: "1.3.0",
  architecture: "x86_64",
  created: "2024-05-01T12:00:00Z",
  partitions: {
    root: { label: "p.lxreadonly", size: 314572800, sha256: "ab".repeat(32) },
    firmware: { label: "p.UEFI", size: 67108864, sha256: "cd".repeat(32) },
  },
};

const bytes = encodeManifest(manifest);

const isCode = (code: string, message?: RegExp) => (error: unknown) => {
  assert.ok(error instanceof EosError, String(error));
  assert.equal(error.code, code);
  if (message) assert.match(error.message, message);
  return true;
};

/** The signature file as it travels: encoded, then decoded by the device. */
function signatureFile(keys: KeyObject[], signed: Buffer = bytes): SignatureDoc {
  return decodeSignatures(encodeSignatures(signManifest(signed, keys)));
}

// --------------------------------------------------------------------------------------------- encoding

test("encodeManifest writes canonical JSON that decodeManifest reads back", () => {
  assert.equal(bytes.toString("utf8"), canonicalize(manifest));
  assert.ok(!bytes.toString("utf8").includes(" "), "no insignificant whitespace");
  assert.deepEqual(decodeManifest(bytes), manifest);
  assert.throws(() => encodeManifest({ ...manifest, version: "" }));
});

test("decodeManifest refuses an equivalent document that is not in canonical form", () => {
  const variants = [
    JSON.stringify(manifest, null, 2),
    JSON.stringify(manifest),
    `${bytes.toString("utf8")}\n`,
    ` ${bytes.toString("utf8")}`,
  ];
  for (const text of variants) {
    assert.deepEqual(JSON.parse(text), JSON.parse(bytes.toString("utf8")), "same JSON value");
    assert.throws(
      () => decodeManifest(Buffer.from(text), "EOS.manifest.json"),
      (error: unknown) =>
        isCode("MANIFEST", /^EOS\.manifest\.json: not in canonical form$/)(error) &&
        /eos manifest/.test((error as EosError).hint ?? ""),
      text.slice(0, 40),
    );
  }
});

test("decodeManifest: schema errors name the source and the field", () => {
  const bad = (patch: (m: Record<string, unknown>) => void): Buffer => {
    const m = structuredClone(manifest) as unknown as Record<string, unknown>;
    patch(m);
    return Buffer.from(canonicalize(m));
  };
  const root = (m: Record<string, unknown>) => (m.partitions as { root: Record<string, unknown> }).root;
  const cases: Array<[string, Buffer, RegExp]> = [
    ["schema 2", bad((m) => (m.schema = 2)), /^M: schema: /],
    ["name with /", bad((m) => (m.name = "a/b")), /^M: name: letters, digits/],
    ["empty version", bad((m) => (m.version = "")), /^M: version: /],
    ["long version", bad((m) => (m.version = "1".repeat(65))), /^M: version: /],
    ["no architecture", bad((m) => delete m.architecture), /^M: architecture: /],
    ["created not a date", bad((m) => (m.created = "yesterday")), /^M: created: /],
    [
      "root sha256 upper case",
      bad((m) => (root(m).sha256 = "AB".repeat(32))),
      /^M: partitions\.root\.sha256: must be 64 lowercase hex digits/,
    ],
    ["root size 0", bad((m) => (root(m).size = 0)), /^M: partitions\.root\.size: /],
    ["root without label", bad((m) => (root(m).label = "")), /^M: partitions\.root\.label: /],
    ["no root", bad((m) => delete (m.partitions as Record<string, unknown>).root), /^M: partitions\.root: /],
    ["unknown top-level key", bad((m) => (m.signed_by = "me")), /^M: \(document\): .*signed_by/],
    [
      "unknown partition",
      bad((m) => ((m.partitions as Record<string, unknown>).spare = root(m))),
      /^M: partitions: .*spare/,
    ],
    ["unknown partition key", bad((m) => (root(m).offset = 1)), /^M: partitions\.root: .*offset/],
  ];
  for (const [why, text, re] of cases) {
    assert.throws(() => decodeManifest(text, "M"), isCode("MANIFEST", re), why);
  }
  assert.throws(() => decodeManifest(Buffer.from("{not json"), "M"), isCode("MANIFEST", /^M: not JSON/));
  assert.throws(() => decodeManifest(Buffer.from(""), "M"), isCode("MANIFEST", /^M: not JSON/));
  // The delta-transfer chunk list is optional and checked when present.
  const withChunks = structuredClone(manifest);
  withChunks.partitions.root.chunks = { size: 1048576, sha256: ["ef".repeat(32)] };
  assert.deepEqual(decodeManifest(encodeManifest(withChunks)), withChunks);
  assert.throws(
    () =>
      decodeManifest(
        bad((m) => (root(m).chunks = { size: 1, sha256: ["x"] })),
        "M",
      ),
    isCode("MANIFEST", /^M: partitions\.root\.chunks\.sha256\[0\]: /),
  );
});

// --------------------------------------------------------------------------------------------- keys

test("keyId is the sha256 of the raw 32-byte ed25519 public key, the same from either half", () => {
  const raw = Buffer.from(release.pub.export({ format: "jwk" }).x as string, "base64url");
  assert.equal(raw.length, 32);
  assert.equal(keyId(release.pub), createHash("sha256").update(raw).digest("hex"));
  assert.equal(keyId(createPublicKey(release.priv)), keyId(release.pub));
  assert.notEqual(keyId(next.pub), keyId(release.pub));
  const ec = generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey;
  assert.throws(() => keyId(ec), isCode("SIGNATURE", /ed25519/));
});

// --------------------------------------------------------------------------------------------- signatures

test("a signature by a trusted key over the exact bytes is accepted and names the key", () => {
  const doc = signatureFile([release.priv]);
  assert.equal(doc.signatures.length, 1);
  assert.equal(doc.signatures[0]?.keyid, keyId(release.pub));
  assert.equal(verifyManifestSignature(bytes, doc, [release.pub]), keyId(release.pub));
  assert.equal(verifyManifestSignature(bytes, doc, [stranger.pub, release.pub]), keyId(release.pub));
});

test("any changed byte is refused: the manifest was altered after signing", () => {
  const doc = signatureFile([release.priv]);
  for (let i = 0; i < bytes.length; i += 7) {
    const altered = Buffer.from(bytes);
    altered[i] = (altered[i] as number) ^ 0x01;
    assert.throws(
      () => verifyManifestSignature(altered, doc, [release.pub]),
      isCode("SIGNATURE", /does not verify: the manifest was altered after signing/),
      `byte ${i}`,
    );
  }
  assert.throws(
    () => verifyManifestSignature(bytes.subarray(0, -1), doc, [release.pub]),
    isCode("SIGNATURE"),
  );
  assert.throws(
    () => verifyManifestSignature(Buffer.concat([bytes, Buffer.from("\n")]), doc, [release.pub]),
    isCode("SIGNATURE"),
  );
});

test("the signature covers bytes, not the JSON value: a reformatted or reordered manifest is refused", () => {
  // The rule: no canonicalisation at verification time. The signer signs the canonical bytes,
  // the verifier checks the bytes it received, and decodeManifest then insists they are canonical.
  const doc = signatureFile([release.priv]);
  const reordered = JSON.stringify(
    Object.fromEntries(Object.entries(JSON.parse(bytes.toString("utf8")) as object).reverse()),
  );
  for (const text of [JSON.stringify(manifest, null, 2), reordered, `${bytes.toString("utf8")} `]) {
    assert.notEqual(text, bytes.toString("utf8"));
    assert.throws(
      () => verifyManifestSignature(Buffer.from(text), doc, [release.pub]),
      isCode("SIGNATURE", /altered/),
    );
  }
  // Even a validly signed non-canonical document is not a manifest.
  const pretty = Buffer.from(JSON.stringify(manifest, null, 2));
  assert.equal(
    verifyManifestSignature(pretty, signatureFile([release.priv], pretty), [release.pub]),
    keyId(release.pub),
  );
  assert.throws(() => decodeManifest(pretty), isCode("MANIFEST", /not in canonical form/));
});

test("a signature made over other content by the trusted key is refused", () => {
  const other = encodeManifest({ ...manifest, version: "1.3.1" });
  const doc = signatureFile([release.priv], other);
  assert.throws(() => verifyManifestSignature(bytes, doc, [release.pub]), isCode("SIGNATURE", /altered/));
});

test("during a key rotation one trusted signature among several suffices, in any order", () => {
  const both = signatureFile([release.priv, next.priv]);
  assert.equal(both.signatures.length, 2);
  // An old device trusts only the old key, a new one only the new key.
  assert.equal(verifyManifestSignature(bytes, both, [release.pub]), keyId(release.pub));
  assert.equal(verifyManifestSignature(bytes, both, [next.pub]), keyId(next.pub));
  // Signatures by keys the device does not know are skipped, wherever they are.
  const withStranger = signatureFile([stranger.priv, next.priv]);
  assert.equal(verifyManifestSignature(bytes, withStranger, [next.pub]), keyId(next.pub));
  // A bad trusted signature does not hide a good one after it.
  const good = signatureFile([release.priv]).signatures[0] as SignatureDoc["signatures"][number];
  const badSig = { keyid: keyId(release.pub), sig: Buffer.alloc(64, 1).toString("base64") };
  assert.equal(
    verifyManifestSignature(bytes, { signatures: [badSig, good] }, [release.pub]),
    keyId(release.pub),
  );
});

test("no signature by a trusted key is refused, and says who signed", () => {
  const doc = signatureFile([stranger.priv, next.priv]);
  assert.throws(
    () => verifyManifestSignature(bytes, doc, [release.pub]),
    (error: unknown) =>
      isCode("SIGNATURE", /is not signed by a trusted key/)(error) &&
      (error as Error).message.includes(keyId(stranger.pub).slice(0, 16)) &&
      (error as Error).message.includes(keyId(next.pub).slice(0, 16)) &&
      /release keys/.test((error as EosError).hint ?? ""),
  );
  // A stranger's signature carrying a trusted key's id is checked against the trusted key: refused.
  const forged = {
    signatures: [
      { keyid: keyId(release.pub), sig: signatureFile([stranger.priv]).signatures[0]?.sig as string },
    ],
  };
  assert.throws(() => verifyManifestSignature(bytes, forged, [release.pub]), isCode("SIGNATURE", /altered/));
});

test("with no trusted keys nothing verifies", () => {
  assert.throws(
    () => verifyManifestSignature(bytes, signatureFile([release.priv]), []),
    (error: unknown) =>
      isCode("SIGNATURE", /no trusted release keys configured/)(error) &&
      /keys:/.test((error as EosError).hint ?? ""),
  );
});

test("decodeSignatures: a malformed signature file is a SIGNATURE error naming the file and field", () => {
  const keyid = keyId(release.pub);
  const cases: Array<[string, string, RegExp]> = [
    ["not JSON", "sig", /^S: not JSON/],
    ["empty", "", /^S: not JSON/],
    ["no signatures", "{}", /^S: signatures: /],
    ["empty list", '{"signatures":[]}', /^S: signatures: /],
    ["not a list", '{"signatures":{}}', /^S: signatures: /],
    ["short keyid", `{"signatures":[{"keyid":"abc","sig":"AA=="}]}`, /^S: signatures\[0\]\.keyid: /],
    [
      "upper-case keyid",
      `{"signatures":[{"keyid":"${keyid.toUpperCase()}","sig":"AA=="}]}`,
      /^S: signatures\[0\]\.keyid: /,
    ],
    ["empty sig", `{"signatures":[{"keyid":"${keyid}","sig":""}]}`, /^S: signatures\[0\]\.sig: /],
    ["sig not a string", `{"signatures":[{"keyid":"${keyid}","sig":1}]}`, /^S: signatures\[0\]\.sig: /],
    [
      "extra key",
      `{"signatures":[{"keyid":"${keyid}","sig":"AA==","alg":"x"}]}`,
      /^S: signatures\[0\]: .*alg/,
    ],
    [
      "extra top-level key",
      `{"signatures":[{"keyid":"${keyid}","sig":"AA=="}],"v":1}`,
      /^S: \(document\): unknown key "v"/,
    ],
  ];
  for (const [why, text, re] of cases) {
    assert.throws(() => decodeSignatures(Buffer.from(text), "S"), isCode("SIGNATURE", re), why);
  }
  // A well-formed file whose signature is not base64 of a signature simply does not verify.
  const junk = decodeSignatures(Buffer.from(`{"signatures":[{"keyid":"${keyid}","sig":"!!!"}]}`));
  assert.throws(() => verifyManifestSignature(bytes, junk, [release.pub]), isCode("SIGNATURE", /altered/));
});

// --------------------------------------------------------------------------------------------- versions

test("compareVersions orders releases as people number them", () => {
  const ordered = ["0.9", "1.0", "1.0.1", "1.2", "1.2.1", "1.9", "1.10", "1.10.2", "2.0", "2.0-1", "10.0"];
  for (let i = 0; i < ordered.length; i++) {
    const a = ordered[i] as string;
    assert.equal(compareVersions(a, a), 0, `${a} = ${a}`);
    for (let j = i + 1; j < ordered.length; j++) {
      const b = ordered[j] as string;
      assert.equal(compareVersions(a, b), -1, `${a} < ${b}`);
      assert.equal(compareVersions(b, a), 1, `${b} > ${a}`);
    }
  }
  // Separators . - + ~ _ are equivalent; non-numeric segments compare as text.
  assert.equal(compareVersions("1.2-3", "1.2.3"), 0);
  assert.equal(compareVersions("1_2", "1~2"), 0);
  assert.equal(compareVersions("1.2+b", "1.2+a"), 1);
  assert.equal(compareVersions("2024.05.01", "2024.5.1"), 0, "numeric segments compare as numbers");
});

test("the downgrade rule: only a strictly older server version is a downgrade", () => {
  // os-update: downgrade = not up to date and compareVersions(server, running) < 0.
  const isDowngrade = (server: string, running: string) => compareVersions(server, running) < 0;
  assert.equal(isDowngrade("1.2.0", "1.3.0"), true);
  assert.equal(isDowngrade("1.9", "1.10"), true, "1.9 is older than 1.10");
  assert.equal(isDowngrade("1.10", "1.9"), false);
  assert.equal(isDowngrade("1.3.0", "1.3.0"), false, "a rebuilt same version is not a downgrade");
  assert.equal(isDowngrade("1.3.1", "1.3.0"), false);
  assert.equal(isDowngrade("2", "1.99.99"), false);
});

test("data_bytes says where a partition's zero tail begins: signed, and never past the partition", () => {
  const root = { ...manifest.partitions.root, data_bytes: 182_452_224 };
  const withData = { ...manifest, partitions: { root } };
  assert.equal(decodeManifest(encodeManifest(withData)).partitions.root.data_bytes, 182_452_224);
  assert.throws(
    () => encodeManifest({ ...manifest, partitions: { root: { ...root, data_bytes: root.size + 1 } } }),
    /partitions\.root\.data_bytes: must not exceed size/,
  );
});
