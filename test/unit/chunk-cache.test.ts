import { test } from "node:test";
import assert from "node:assert/strict";
import { chunkBuffer, type ChunkerParams } from "../../src/core/update/chunker.ts";
import {
  decodeChunkCache,
  encodeChunkCache,
  locateChunks,
  MAX_CHUNK_CACHE_BYTES,
  type ChunkCacheKey,
} from "../../src/core/update/chunk-cache.ts";
import { pseudoRandomBytes } from "../helpers/sample-image.ts";

const SMALL: ChunkerParams = { min: 256, avg: 1024, max: 4096 };
// Data, then a zero tail as in a slot: its many equal chunks are one entry.
const data = Buffer.concat([pseudoRandomBytes("cache", 60_000), Buffer.alloc(40_000)]);
const chunks = chunkBuffer(data, SMALL);
const key: ChunkCacheKey = { sha256: "ab".repeat(32), length: data.length, chunker: SMALL };

test("locateChunks: the first offset of each distinct chunk", () => {
  const at = locateChunks(chunks);
  assert.ok(at.size < chunks.length, "the zero tail's equal chunks collapse");
  for (const c of chunks) assert.ok((at.get(c.sha256) as number) <= c.offset);
  for (const [sha, offset] of at)
    assert.equal(chunks.find((c) => c.sha256 === sha)?.offset, offset, "the first occurrence");
});

test("a cache decodes to what was encoded, for its own key only", () => {
  const at = locateChunks(chunks);
  const bytes = encodeChunkCache(key, at) as Buffer;
  assert.deepEqual(decodeChunkCache(bytes, key), at);
  assert.equal(decodeChunkCache(bytes, { ...key, sha256: "cd".repeat(32) }), undefined, "another root");
  assert.equal(decodeChunkCache(bytes, { ...key, length: key.length - 1 }), undefined, "other bytes");
  assert.equal(decodeChunkCache(bytes, { ...key, chunker: { ...SMALL, avg: 2048 } }), undefined, "chunker");
});

test("a cache that does not parse is ignored, never trusted in part", () => {
  const bytes = encodeChunkCache(key, locateChunks(chunks)) as Buffer;
  assert.equal(decodeChunkCache(bytes.subarray(0, bytes.length - 1), key), undefined, "truncated");
  assert.equal(decodeChunkCache(Buffer.from("not a cache"), key), undefined, "no header line");
  assert.equal(decodeChunkCache(Buffer.from("{oops\n"), key), undefined, "header not JSON");
  assert.equal(decodeChunkCache(Buffer.alloc(0), key), undefined, "empty");
  const nl = bytes.indexOf(0x0a);
  const past = Buffer.from(bytes);
  past.writeBigUInt64BE(BigInt(key.length), nl + 1);
  assert.equal(decodeChunkCache(past, key), undefined, "an offset past the bytes chunked");
});

test("the cache is bounded: a list that would exceed the bound is not written", () => {
  const many = new Map<string, number>();
  for (let i = 0; many.size * 40 <= MAX_CHUNK_CACHE_BYTES; i++) many.set(i.toString(16).padStart(64, "0"), i);
  assert.equal(encodeChunkCache({ ...key, length: many.size }, many), undefined);
});
