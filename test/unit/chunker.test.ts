import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { Chunker, ChunkHasher, chunkBuffer, type ChunkerParams } from "../../src/core/update/chunker.ts";

import { pseudoRandomBytes } from "../helpers/sample-image.ts";

const SMALL: ChunkerParams = { min: 256, avg: 1024, max: 4096 };

test("chunks cover the input exactly, within min and max (the last may be shorter)", () => {
  const data = pseudoRandomBytes("cover", 200_000);
  const chunks = chunkBuffer(data, SMALL);
  let at = 0;
  for (const [i, c] of chunks.entries()) {
    assert.equal(c.offset, at);
    assert.ok(c.size <= SMALL.max, `chunk ${i} ${c.size} > max`);
    if (i < chunks.length - 1) assert.ok(c.size >= SMALL.min, `chunk ${i} ${c.size} < min`);
    at += c.size;
  }
  assert.equal(at, data.length);
  const mean = data.length / chunks.length;
  assert.ok(mean > SMALL.avg / 2 && mean < SMALL.avg * 2, `mean chunk ${mean} near ${SMALL.avg}`);
});

test("streaming: the cut points do not depend on how the bytes are split into pushes", () => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 1, maxLength: 40 }), (sizes) => {
      const data = pseudoRandomBytes("split", 60_000);
      const whole = new Chunker(SMALL);
      const expected = [...whole.push(data), ...whole.end()];
      const pieces = new Chunker(SMALL);
      const got: number[] = [];
      let at = 0;
      for (const size of sizes) {
        if (at >= data.length) break;
        got.push(...pieces.push(data.subarray(at, at + size)));
        at += size;
      }
      got.push(...pieces.push(data.subarray(at)), ...pieces.end());
      assert.deepEqual(got, expected);
    }),
    { numRuns: 50 },
  );
});

test("content-defined: bytes inserted near the start change only the chunks around them", () => {
  const data = pseudoRandomBytes("shift", 300_000);
  const changed = Buffer.concat([
    data.subarray(0, 5000),
    Buffer.from("a few new bytes"),
    data.subarray(5000),
  ]);
  const before = new Set(chunkBuffer(data, SMALL).map((c) => c.sha256));
  const after = chunkBuffer(changed, SMALL);
  const reused = after.filter((c) => before.has(c.sha256)).length;
  assert.ok(reused >= after.length - 3, `${reused} of ${after.length} chunks reused`);
});

test("bad parameters are refused", () => {
  assert.throws(() => new Chunker({ min: 0, avg: 1024, max: 4096 }), RangeError);
  assert.throws(() => new Chunker({ min: 2048, avg: 1024, max: 4096 }), RangeError);
});

test("ChunkHasher gives chunkBuffer's chunks and hashes for a stream in any pieces", () => {
  const data = pseudoRandomBytes("hasher", 50_000);
  const whole = chunkBuffer(data, SMALL);
  for (const piece of [1, 777, 4096, data.length]) {
    const hasher = new ChunkHasher(SMALL);
    for (let at = 0; at < data.length; at += piece) hasher.push(data.subarray(at, at + piece));
    assert.deepEqual(hasher.end(), whole, `pieces of ${piece}`);
  }
});
