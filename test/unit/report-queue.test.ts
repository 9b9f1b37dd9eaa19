/**
 * The device's report queue as data: spilled events and the lost count are
 * folded in once each, overflow is counted, and what the server took is
 * removed without forgetting drops it was not told of.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { MAX_EVENTS_PER_BATCH, type DeviceEvent } from "../../src/core/fleet/events.ts";
import {
  absorbSpill,
  appendEvent,
  parseReportQueue,
  MAX_RETRY_AFTER_MS,
  QUEUE_MAX,
  applyReceipt,
  applyReceipts,
  outgoing,
  parseReceipt,
  retryAfterAt,
  stateOnly,
  undelivered,
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
  const after = applyReceipt(q, { ids: ["a", "b"], dropped: 3, lostFrom: 2, lostTo: 2 });
  assert.deepEqual([ids(after), after.dropped, after.lostSeen], [["c"], 2, 2]);
  assert.equal(applyReceipt(q, { ids: [], dropped: 9, lostFrom: 2, lostTo: 2 }).dropped, 0);
});

test("a batch counts the lost bytes the queue has not taken in; its receipt takes them out once, taken in since or not", () => {
  const q: ReportQueue = { events: [ev("a")], dropped: 2, lostSeen: 1 };
  const batch = outgoing(q, [ev("s"), ev("a")], 4);
  assert.deepEqual(
    batch.events.map((e) => e.id),
    ["a", "s"],
  );
  assert.equal(batch.dropped, 2 + 3, "the queue's 2 and the 3 lost bytes since it last looked");
  // Nobody took the lost bytes in meanwhile; one more event was dropped and a byte lost after the send.
  const untouched = applyReceipt({ ...q, dropped: 3 }, batch.receipt);
  assert.deepEqual([untouched.dropped, untouched.lostSeen], [1, 4]);
  assert.equal(absorbSpill(untouched, { events: [], damaged: 0 }, 5).dropped, 2);
  // A writer took them in before the receipt was applied: the same result.
  const taken = absorbSpill({ ...q, dropped: 3 }, { events: [], damaged: 0 }, 5);
  assert.equal(applyReceipt(taken, batch.receipt).dropped, 2);
});

test("a batch is at most a batch's limit; nothing is counted for what did not fit", () => {
  let q = empty;
  for (let i = 0; i < QUEUE_MAX; i++) q = appendEvent(q, ev(`q${i}`));
  const spilled = Array.from({ length: 64 }, (_, i) => ev(`s${i}`));
  const batch = outgoing(q, spilled, 0);
  assert.equal(batch.events.length, MAX_EVENTS_PER_BATCH);
  assert.equal(batch.dropped, 0);
});

test("a receipt is applied once, also when its file outlives the write (a crash) or is listed again", () => {
  const q: ReportQueue = { events: [ev("a"), ev("b")], dropped: 4, lostSeen: 0 };
  const r = { name: "r1.json", receipt: { ids: ["a"], dropped: 3, lostFrom: 0, lostTo: 0 } };
  const once = applyReceipts(q, [r]);
  assert.deepEqual([ids(once), once.dropped, once.applied], [["b"], 1, ["r1.json"]]);
  const again = applyReceipts(parseReportQueue(JSON.stringify(once)), [r]);
  assert.deepEqual([ids(again), again.dropped], [["b"], 1]);
  // Its file removed, then a reader that listed it before reads the queue.
  const later = applyReceipts(applyReceipts(again, []), [r]);
  assert.equal(later.dropped, 1);
  assert.deepEqual(
    undelivered([ev("a"), ev("c")], [r]).map((e) => e.id),
    ["c"],
  );
  assert.equal(parseReceipt("{bad"), undefined);
  assert.deepEqual(parseReceipt(JSON.stringify(r.receipt)), r.receipt);
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

test("the time the server asked for is kept in the file, through merges; a send clears it (reporter.ts), not a receipt", () => {
  const q = parseReportQueue(JSON.stringify({ events: [ev("a")], dropped: 0, retryAt: 1234 }));
  assert.equal(q.retryAt, 1234);
  assert.equal(absorbSpill(q, { events: [ev("b")], damaged: 0 }, 0).retryAt, 1234);
  assert.equal(appendEvent(q, ev("c")).retryAt, 1234);
  assert.equal(
    applyReceipt(q, { ids: ["a"], dropped: 0, lostFrom: 0, lostTo: 0 }).retryAt,
    1234,
    "cleared by the send",
  );
  assert.equal(parseReportQueue(JSON.stringify({ events: [], retryAt: "x" })).retryAt, undefined);
});

test("while the server asks for a wait, a batch keeps its state events (and the drop count), not its checks", () => {
  const check: DeviceEvent = {
    type: "checked",
    id: "c1",
    time: "2026-12-02T09:00:00.000Z",
    version: "1",
    slot: "A",
    sha256: "0".repeat(64),
    available: true,
  };
  const batch = outgoing({ events: [check, ev("k1")], dropped: 2, lostSeen: 0 }, [], 0);
  const urgent = stateOnly(batch);
  assert.deepEqual(
    urgent?.events.map((e) => e.id),
    ["k1"],
  );
  assert.deepEqual([urgent?.dropped, urgent?.receipt.ids, urgent?.receipt.dropped], [2, ["k1"], 2]);
  assert.equal(stateOnly(outgoing({ events: [check], dropped: 0, lostSeen: 0 }, [], 0)), undefined);
});
