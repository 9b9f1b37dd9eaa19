/**
 * The device's report queue as data: spilled events and the lost count are
 * folded in once each, overflow is counted, and what the server took is
 * removed without forgetting drops it was not told of.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { DeviceEvent } from "../../src/core/fleet/events.ts";
import {
  absorbSpill,
  appendEvent,
  parseReportQueue,
  MAX_RETRY_AFTER_MS,
  QUEUE_MAX,
  removeSent,
  retryAfterAt,
  type ReportQueue,
} from "../../src/core/fleet/report-queue.ts";

const ev = (id: string): DeviceEvent => ({
  type: "kexec",
  id,
  time: "2026-12-02T09:00:00.000Z",
  version: "2",
  slot: "B",
});
const empty: ReportQueue = { events: [], dropped: 0, lostSeen: 0 };
const ids = (q: ReportQueue) => q.events.map((e) => e.id);

test("a damaged queue file is an empty queue; counts that are not whole numbers are 0", () => {
  assert.deepEqual(parseReportQueue("{not json"), empty);
  assert.deepEqual(parseReportQueue(JSON.stringify({ events: "x", dropped: -3, lostSeen: 1.5 })), empty);
  // A queue written before the lost count existed.
  assert.deepEqual(parseReportQueue(JSON.stringify({ events: [ev("a")], dropped: 2 })), {
    events: [ev("a")],
    dropped: 2,
    lostSeen: 0,
  });
});

test("a full queue drops its oldest event and counts it", () => {
  let q = empty;
  for (let i = 0; i < QUEUE_MAX + 3; i++) q = appendEvent(q, ev(`e${i}`));
  assert.equal(q.events.length, QUEUE_MAX);
  assert.equal(q.dropped, 3);
  assert.equal(ids(q)[0], "e3");
});

test("spilled events follow the queued ones, once each; damaged spill files are counted", () => {
  const q = appendEvent(empty, ev("q1"));
  const merged = absorbSpill(q, { events: [ev("s1"), ev("q1"), ev("s2")], damaged: 1 }, 0);
  assert.deepEqual(ids(merged), ["q1", "s1", "s2"]);
  assert.equal(merged.dropped, 1);
});

test("the lost count is taken in once: only the bytes added since", () => {
  const once = absorbSpill(empty, { events: [], damaged: 0 }, 3);
  assert.deepEqual([once.dropped, once.lostSeen], [3, 3]);
  const again = absorbSpill(once, { events: [], damaged: 0 }, 5);
  assert.deepEqual([again.dropped, again.lostSeen], [5, 5]);
  // The count file removed and begun again: all of it is new.
  const restarted = absorbSpill(again, { events: [], damaged: 0 }, 1);
  assert.deepEqual([restarted.dropped, restarted.lostSeen], [6, 1]);
});

test("a spill that overfills the queue drops (and counts) the oldest", () => {
  let q = empty;
  for (let i = 0; i < QUEUE_MAX; i++) q = appendEvent(q, ev(`q${i}`));
  const merged = absorbSpill(q, { events: [ev("s1"), ev("s2")], damaged: 0 }, 0);
  assert.equal(merged.events.length, QUEUE_MAX);
  assert.deepEqual(ids(merged).slice(-2), ["s1", "s2"]);
  assert.equal(merged.dropped, 2);
});

test("after a send, the sent events go and the drops the server was told of; later ones stay", () => {
  const q: ReportQueue = { events: [ev("a"), ev("b"), ev("c")], dropped: 5, lostSeen: 2 };
  const after = removeSent(q, new Set(["a", "b"]), 3);
  assert.deepEqual([ids(after), after.dropped, after.lostSeen], [["c"], 2, 2]);
  assert.equal(removeSent(q, new Set(), 9).dropped, 0);
});

test("the server's Retry-After: seconds or a date, capped; nothing usable is no wait", () => {
  const now = Date.parse("2026-12-02T09:00:00Z");
  assert.equal(retryAfterAt("30", now), now + 30_000);
  assert.equal(retryAfterAt(" 30 ", now), now + 30_000);
  assert.equal(retryAfterAt("Wed, 02 Dec 2026 09:01:00 GMT", now), now + 60_000);
  assert.equal(retryAfterAt("999999", now), now + MAX_RETRY_AFTER_MS);
  for (const bad of [undefined, "", "soon", "-5", "0", "Wed, 02 Dec 2026 08:00:00 GMT"])
    assert.equal(retryAfterAt(bad, now), undefined, String(bad));
});

test("the time the server asked for is kept in the file, through merges, and cleared by a send", () => {
  const q = parseReportQueue(JSON.stringify({ events: [ev("a")], dropped: 0, retryAt: 1234 }));
  assert.equal(q.retryAt, 1234);
  assert.equal(absorbSpill(q, { events: [ev("b")], damaged: 0 }, 0).retryAt, 1234);
  assert.equal(appendEvent(q, ev("c")).retryAt, 1234);
  assert.equal(removeSent(q, new Set(["a"]), 0).retryAt, undefined);
  assert.equal(parseReportQueue(JSON.stringify({ events: [], retryAt: "x" })).retryAt, undefined);
});
