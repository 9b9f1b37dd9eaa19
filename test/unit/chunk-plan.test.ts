import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chunkBuffer } from "../../src/core/update/chunker.ts";
import {
  assembledChunks,
  ChunkChecker,
  computedTree,
  planChunkWork,
} from "../../src/core/update/chunk-plan.ts";

const chunk = (offset: number, size: number, sha256: string) => ({ offset, size, sha256 });
/** Ten chunks of 10 bytes, named c0..c9. */
const ten = Array.from({ length: 10 }, (_, i) => chunk(i * 10, 10, `c${i}`));

test("missing neighbours merge into one request; a long known stretch splits them", () => {
  const known = new Map([
    ["c1", 500],
    ["c3", 600],
    ["c4", 610],
    ["c5", 620],
  ]);
  const work = planChunkWork(ten, [], (sha) => known.get(sha), { maxGap: 10, maxRequest: 1000 });
  // c0 and c2 are missing with one known chunk (10 bytes) between: one request, c1 fetched with them.
  assert.deepEqual(
    work.fetches.map((f) => [f.start, f.end, f.chunks.map((c) => c.sha256)]),
    [
      [0, 30, ["c0", "c1", "c2"]],
      [60, 100, ["c6", "c7", "c8", "c9"]],
    ],
  );
  assert.deepEqual(
    work.copies.map((c) => [c.chunk.sha256, c.from]),
    [
      ["c3", 600],
      ["c4", 610],
      ["c5", 620],
    ],
  );
  assert.equal(work.fetchBytes, 70);
});

test("a request never grows past its cap; chunks the target holds are neither copied nor fetched", () => {
  const held = [false, true, false, false, false, false, false, false, false, true];
  const work = planChunkWork(ten, held, () => undefined, { maxGap: 0, maxRequest: 30 });
  assert.deepEqual(
    work.fetches.map((f) => [f.start, f.end]),
    [
      [0, 10],
      [20, 50],
      [50, 80],
      [80, 90],
    ],
  );
  assert.equal(work.heldBytes, 20);
  assert.equal(work.copies.length, 0);
});

test("ChunkChecker matches chunks whatever the block sizes", () => {
  const data = randomBytes(200_000);
  const chunks = chunkBuffer(data, { min: 1024, avg: 4096, max: 16384 });
  const changed = Buffer.from(data);
  const victim = chunks[3] as { offset: number };
  changed[victim.offset] = (changed[victim.offset] as number) ^ 1;
  const checker = new ChunkChecker(chunks);
  for (let at = 0; at < changed.length; at += 7777) checker.push(changed.subarray(at, at + 7777));
  assert.equal(checker.matches.length, chunks.length);
  assert.deepEqual(
    checker.matches.flatMap((m, i) => (m ? [] : [i])),
    [3],
  );
});

test("a root with a dm-verity tree: only chunks that start in the file system are planned", () => {
  // 2 data blocks (8192 bytes): the superblock and one tree block follow, 8192 bytes.
  const record = { algorithm: "sha256" as const, data_blocks: 2, root_hash: "ab".repeat(32) };
  const tree = computedTree(record, 16_384);
  assert.deepEqual(tree, { offset: 8192, bytes: 8192, record });
  const chunks = [
    chunk(0, 5000, "a"),
    chunk(5000, 4000, "b"),
    chunk(9000, 4000, "c"),
    chunk(13_000, 3384, "d"),
  ];
  // "b" reaches into the tree: taken whole, its hash covers both sides; "c" and "d" are computed.
  assert.deepEqual(
    assembledChunks(chunks, tree).map((c) => c.sha256),
    ["a", "b"],
  );
  const work = planChunkWork(assembledChunks(chunks, tree), [], () => undefined);
  assert.equal(work.fetchBytes, 9000);
  // No tree, or one the index does not cover (a record that claims more than the root): all chunks.
  assert.equal(computedTree(undefined, 16_384), undefined);
  assert.equal(computedTree(record, 16_383), undefined);
  assert.equal(assembledChunks(chunks, undefined).length, 4);
});
