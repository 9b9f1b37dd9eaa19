import { test } from "node:test";
import assert from "node:assert/strict";
import { BufferPool, SIZE_CLASSES } from "../../src/io/server/buffer-pool.ts";

const [SMALL, , BIG] = SIZE_CLASSES;

test("big buffers are rationed: past the ration a stream gets the smallest size", () => {
  const pool = new BufferPool(0, 2 * BIG);
  const a = pool.take(BIG);
  const b = pool.take(BIG);
  const c = pool.take(BIG);
  assert.equal(a.length, BIG);
  assert.equal(b.length, BIG);
  assert.equal(c.length, SMALL, "the third big buffer is over the ration");
  assert.equal(pool.bigInUse, 2 * BIG);
  pool.give(a);
  pool.give(c);
  assert.equal(pool.bigInUse, BIG);
  assert.equal(pool.take(BIG).length, BIG, "a returned big buffer frees its share");
});

test("freed buffers are reused up to the budget, never handed out twice", () => {
  const pool = new BufferPool(SMALL, 0);
  const a = pool.take(SMALL);
  const b = pool.take(SMALL);
  pool.give(a);
  pool.give(b); // over the budget: dropped, not kept
  assert.equal(pool.bytes, SMALL);
  const x = pool.take(SMALL);
  const y = pool.take(SMALL);
  assert.equal(x, a);
  assert.notEqual(y, a);
});

test("drain lets every kept buffer go", () => {
  const pool = new BufferPool(4 * SMALL, 0);
  const a = pool.take(SMALL);
  pool.give(a);
  assert.equal(pool.bytes, SMALL);
  pool.drain();
  assert.equal(pool.bytes, 0);
  assert.notEqual(pool.take(SMALL), a, "a drained buffer is not handed out again");
});
