import { test } from "node:test";
import assert from "node:assert/strict";
import { MIN_KEEP, planRetention, type PublishedEntry } from "../../src/core/server/retention.ts";

const history: PublishedEntry[] = ["6", "5", "4", "3", "2", "1"].map((v) => ({
  vid: `${v}.0-x`,
  version: `${v}.0`,
}));
const versions = (entries: PublishedEntry[]) => entries.map((e) => e.version);

test("the newest `keep` versions stay, older ones go unless the fleet needs them", () => {
  const plan = planRetention(history, 3, new Map([["2.0", "rollout r1 (aborted) assigns it back"]]));
  assert.deepEqual(versions(plan.keep), ["6.0", "5.0", "4.0", "2.0"]);
  assert.deepEqual(versions(plan.drop), ["3.0", "1.0"]);
  assert.equal(plan.keep[0]?.why, "current");
  assert.equal(plan.keep[3]?.why, "rollout r1 (aborted) assigns it back");
});

test("never fewer than the current version and the one before it", () => {
  const plan = planRetention(history, 1, new Map());
  assert.equal(plan.keep.length, MIN_KEEP);
  assert.deepEqual(versions(plan.keep), ["6.0", "5.0"]);
});

test("a version the fleet runs is kept however old; an unreadable one (no version) is not", () => {
  const withBroken = [...history, { vid: "broken", version: "" }];
  const plan = planRetention(withBroken, 2, new Map([["1.0", "3 device(s) run it"]]));
  assert.deepEqual(versions(plan.keep), ["6.0", "5.0", "1.0"]);
  assert.deepEqual(
    plan.drop.map((e) => e.vid),
    ["4.0-x", "3.0-x", "2.0-x", "broken"],
  );
});

test("nothing to drop when the history is short", () => {
  assert.deepEqual(planRetention(history.slice(0, 2), 4, new Map()).drop, []);
  assert.deepEqual(planRetention([], 4, new Map()), { keep: [], drop: [] });
});
