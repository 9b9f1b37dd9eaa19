import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { chunkBuffer, type ChunkerParams } from "../../src/core/update/chunker.ts";
import { encodeChunkIndex, openChunkIndex } from "../../src/core/update/chunk-index.ts";
import { decodeManifest, encodeManifest, type Manifest } from "../../src/core/manifest.ts";
import { pseudoRandomBytes } from "../helpers/sample-image.ts";

const SMALL: ChunkerParams = { min: 256, avg: 1024, max: 4096 };
const data = pseudoRandomBytes("index", 100_000);
const chunks = chunkBuffer(data, SMALL);
const rootSha = createHash("sha256").update(data).update(Buffer.alloc(28_000)).digest("hex");
const header = {
  schema: 1 as const,
  name: "EOS",
  architecture: "x86_64",
  version: "2.0.0",
  root_sha256: rootSha,
  data_bytes: data.length,
  chunker: SMALL,
};
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

/** A manifest for the root, signed-over fields included, vouching for `index` (or none). */
function manifestFor(index: Buffer | undefined): Manifest {
  const root = {
    label: "p.lxreadonly",
    size: 128_000,
    sha256: rootSha,
    data_bytes: data.length,
    ...(index ? { chunk_index: { size: index.length, sha256: sha(index) } } : {}),
  };
  const m: Manifest = {
    schema: 1,
    name: "EOS",
    version: "2.0.0",
    architecture: "x86_64",
    created: "2026-01-01T00:00:00Z",
    partitions: { root },
  };
  return decodeManifest(encodeManifest(m));
}

test("a chunk index the signed manifest vouches for reads back as the chunks it was made from", () => {
  const index = encodeChunkIndex(header, chunks);
  assert.deepEqual(openChunkIndex(index, manifestFor(index)).chunks, chunks);
  assert.ok(index.length < chunks.length * 40 + 300, "36 bytes a chunk and a header");
});

test("an index the manifest does not vouch for is refused before a field of it is read", () => {
  const index = encodeChunkIndex(header, chunks);
  const tampered = Buffer.from(index);
  tampered[tampered.length - 1] = (tampered[tampered.length - 1] as number) ^ 1;
  assert.throws(() => openChunkIndex(tampered, manifestFor(index)), { code: "HASH_MISMATCH" });
  assert.throws(() => openChunkIndex(index.subarray(0, -36), manifestFor(index)), { code: "HASH_MISMATCH" });
  // An old manifest (no chunk_index): even a genuine index is not used.
  assert.throws(() => openChunkIndex(index, manifestFor(undefined)), /names no chunk index/);
});

test("a genuine index of another image, version or architecture is refused: it is bound like the manifest", () => {
  for (const [field, value] of [
    ["name", "Other"],
    ["version", "1.0.0"],
    ["architecture", "aarch64"],
    ["root_sha256", "ab".repeat(32)],
  ] as const) {
    const other = encodeChunkIndex({ ...header, [field]: value }, chunks);
    assert.throws(() => openChunkIndex(other, manifestFor(other)), new RegExp(`is for ${field} `), field);
  }
});

test("chunks that do not cover the root's data exactly are refused", () => {
  const short = encodeChunkIndex(header, chunks.slice(0, -1));
  assert.throws(() => openChunkIndex(short, manifestFor(short)), /the chunks cover \d+ bytes/);
  const huge = encodeChunkIndex(header, [{ offset: 0, size: data.length, sha256: sha(data) }]);
  assert.throws(() => openChunkIndex(huge, manifestFor(huge)), /chunk 0 has 100000 bytes \(at most 4096\)/);
});
