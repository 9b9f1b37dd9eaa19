/**
 * Bugs the property-based fuzzing found (issue 11), each pinned by an example.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { decodeGrubenv, encodeGrubenv } from "../../src/core/update/grubenv.ts";
import { decodeManifest, encodeManifest, type Manifest } from "../../src/core/manifest.ts";
import { parseRange } from "../../src/core/http-range.ts";
import { EosError } from "../../src/core/errors.ts";

test("grubenv: a value that would not read back as written (not printable ASCII) is refused", () => {
  for (const value of ["1.0-Ā", "caf\u00e9", "a\u0000b", "tab\there", "\r"]) {
    assert.throws(
      () => encodeGrubenv(new Map([["eos_B_version", value]])),
      (error: unknown) => {
        assert.ok(error instanceof EosError);
        assert.equal(error.code, "BOOT_CONTROL");
        assert.match(error.message, /GRUB variable eos_B_version has characters other than printable ASCII/);
        return true;
      },
    );
  }
  const vars = new Map([["eos_B_version", "1.0.0+build.7 ~rc=1#x"]]);
  assert.deepEqual(decodeGrubenv(encodeGrubenv(vars)), vars);
});

const manifest: Manifest = {
  schema: 1,
  name: "EOS",
  version: "1.0.0",
  architecture: "x86_64",
  created: "2024-01-01T00:00:00.000Z",
  partitions: { root: { label: "p.lxreadonly", size: 1048576, sha256: "a".repeat(64) } },
};

test("manifest: bytes that are not valid UTF-8 or carry a BOM are refused, though they decode to the same text", () => {
  const bytes = encodeManifest(manifest);
  assert.ok(decodeManifest(bytes));
  // An overlong encoding of "E" (0xC1 0x85) decodes to U+FFFD U+FFFD: refused, whatever the text shows.
  const at = bytes.indexOf(Buffer.from('"EOS"'));
  const invalid = Buffer.concat([
    bytes.subarray(0, at + 1),
    Buffer.from([0xc1, 0x85]),
    bytes.subarray(at + 2),
  ]);
  assert.throws(() => decodeManifest(invalid, "m.json"), { code: "MANIFEST", message: /^m\.json: / });
  const bom = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), encodeManifest(manifest)]);
  assert.throws(() => decodeManifest(bom, "m.json"), { code: "MANIFEST" });
  assert.throws(() => encodeManifest({ ...manifest, version: "1.0\ufffd" }), {
    code: "MANIFEST",
    message: /version: /,
  });
});

test("Range: a suffix range of an empty representation is unsatisfiable, never an end before the start", () => {
  assert.deepEqual(parseRange("bytes=-5", 0), { kind: "unsatisfiable" });
  assert.deepEqual(parseRange("bytes=-5", 3), { kind: "range", start: 0, end: 2 });
  assert.deepEqual(parseRange("bytes=-0", 3), { kind: "unsatisfiable" });
});
