import { test } from "node:test";
import assert from "node:assert/strict";
import { TtlCache } from "../../src/core/fleet/ttl-cache.ts";

test("an entry lives ttl ms from when it was set, not a clock step set back longer", () => {
  const c = new TtlCache<string, number>(1000, 10);
  c.set("a", 1, 5000);
  assert.equal(c.get("a", 5999), 1);
  assert.equal(c.get("a", 6000), undefined);
  c.set("a", 2, 5000);
  assert.equal(c.get("a", 3000), undefined, "a clock set back must not stretch the bound");
});

test("at most max entries: the oldest goes first, and expired ones go as new ones come", () => {
  const c = new TtlCache<number, number>(1000, 3);
  for (let i = 0; i < 5; i++) c.set(i, i, 100);
  assert.equal(c.size, 3);
  assert.deepEqual(
    [0, 1, 2, 3, 4].map((i) => c.get(i, 100)),
    [undefined, undefined, 2, 3, 4],
  );
  c.set(9, 9, 1200);
  assert.equal(c.size, 1, "the expired entries were dropped when a new one came");
});

test("deleteWhere drops every entry whose value matches", () => {
  const c = new TtlCache<string, { device: string }>(1000, 10);
  c.set("t1", { device: "d1" }, 0);
  c.set("t2", { device: "d1" }, 0);
  c.set("t3", { device: "d2" }, 0);
  c.deleteWhere((v) => v.device === "d1");
  assert.deepEqual(
    ["t1", "t2", "t3"].map((k) => c.get(k, 1)?.device),
    [undefined, undefined, "d2"],
  );
});
