/**
 * The device's report queue as data: spilled events and the lost count are
 * folded in once each, overflow is counted in a total that only grows under
 * the queue's id, and what the server took is removed.
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
const empty: ReportQueue = { events: [], drops: 0, lostSeen: 0 };
const ids = (q: ReportQueue) => q.events.map((e) => e.id);
/** A queue some writer has written: it has its id. */
const made: ReportQueue = { ...empty, id: "queue-0001" };

test("a damaged queue file is an empty queue with no id (its writer makes a new one); bad counts are 0", () => {
  assert.deepEqual(parseReportQueue("{not json"), empty);
  assert.deepEqual(parseReportQueue(JSON.stringify({ id: "queue-0001", drops: 4, events: "x" })), {
    ...made,
    drops: 4,
  });
  assert.deepEqual(parseReportQueue(JSON.stringify({ id: "x", drops: 4 })), empty, "not an id: a new queue");
  assert.deepEqual(parseReportQueue(JSON.stringify({ id: "queue-0001", drops: -3, lostSeen: 1.5 })), made);
  // A queue from before totals: the drops it had not reported start the total of the id it is given.
  assert.deepEqual(parseReportQueue(JSON.stringify({ events: [ev("a")], dropped: 2 })), {
    events: [ev("a")],
    drops: 2,
    lostSeen: 0,
  });
});

test("the id and the drop total are kept through appends, trims, spills, receipts and the file", () => {
  let q = made;
  for (let i = 0; i < QUEUE_MAX + 3; i++) q = appendEvent(q, ev(`e${i}`));
  q = absorbSpill(q, { events: [ev("s1")], damaged: 1 }, 2);
  assert.deepEqual([q.id, q.drops], ["queue-0001", 3 + 1 + 1 + 2]);
  q = applyReceipts(q, [{ name: "r1.json", receipt: { ids: ids(q) } }]);
  assert.deepEqual([q.events.length, q.id, q.drops], [0, "queue-0001", 7], "a send takes no drops out");
  q = parseReportQueue(JSON.stringify(q));
  assert.deepEqual([q.id, q.drops], ["queue-0001", 7]);
  assert.equal(appendEvent(q, ev("x")).drops, 7);
});

test("a full queue drops its oldest event and counts it", () => {
  let q = empty;
  for (let i = 0; i < QUEUE_MAX + 3; i++) q = appendEvent(q, ev(`e${i}`));
  assert.equal(q.events.length, QUEUE_MAX);
  assert.equal(q.drops, 3);
  assert.equal(ids(q)[0], "e3");
});

test("spilled events follow the queued ones, once each; damaged spill files are counted", () => {
  const q = appendEvent(empty, ev("q1"));
  const merged = absorbSpill(q, { events: [ev("s1"), ev("q1"), ev("s2")], damaged: 1 }, 0);
  assert.deepEqual(ids(merged), ["q1", "s1", "s2"]);
  assert.equal(merged.drops, 1);
});

test("the lost count is taken in once: only the bytes added since", () => {
  const once = absorbSpill(empty, { events: [], damaged: 0 }, 3);
  assert.deepEqual([once.drops, once.lostSeen], [3, 3]);
  const again = absorbSpill(once, { events: [], damaged: 0 }, 5);
  assert.deepEqual([again.drops, again.lostSeen], [5, 5]);
  // The count file removed and begun again: all of it is new.
  const restarted = absorbSpill(again, { events: [], damaged: 0 }, 1);
  assert.deepEqual([restarted.drops, restarted.lostSeen], [6, 1]);
});

test("a spill that overfills the queue drops (and counts) the oldest", () => {
  let q = empty;
  for (let i = 0; i < QUEUE_MAX; i++) q = appendEvent(q, ev(`q${i}`));
  const merged = absorbSpill(q, { events: [ev("s1"), ev("s2")], damaged: 0 }, 0);
  assert.equal(merged.events.length, QUEUE_MAX);
  assert.deepEqual(ids(merged).slice(-2), ["s1", "s2"]);
  assert.equal(merged.drops, 2);
});

test("after a send, the sent events go and the drop total stays; later events stay", () => {
  const q: ReportQueue = { events: [ev("a"), ev("b"), ev("c")], id: "queue-0001", drops: 5, lostSeen: 2 };
  const after = applyReceipt(q, { ids: ["a", "b"] });
  assert.deepEqual([ids(after), after.drops, after.lostSeen], [["c"], 5, 2]);
});

test("a batch sends the queue's total with the lost bytes it has not taken in: the total it will have", () => {
  const q: ReportQueue = { events: [ev("a")], id: "queue-0001", drops: 2, lostSeen: 1 };
  const batch = outgoing(q, [ev("s"), ev("a")], 4);
  assert.deepEqual(
    batch.events.map((e) => e.id),
    ["a", "s"],
  );
  assert.deepEqual(batch.drops, { queue: "queue-0001", total: 2 + 3 });
  assert.deepEqual(batch.receipt, { ids: ["a", "s"] });
  // A writer takes the lost bytes in: the queue's total is what was sent, so a send after it adds nothing.
  const taken = absorbSpill(applyReceipt(q, batch.receipt), { events: [], damaged: 0 }, 4);
  assert.equal(taken.drops, 5);
  assert.deepEqual(outgoing(appendEvent(taken, ev("b")), [], 4).drops, { queue: "queue-0001", total: 5 });
  // No writer has written the queue yet: no id to count under, so its drops wait for one.
  assert.equal(outgoing({ ...q, id: undefined }, [], 4).drops, undefined);
  assert.equal(outgoing({ ...made, events: [ev("a")] }, [], 0).drops, undefined, "a total of 0 is not sent");
});

test("a batch is at most a batch's limit; nothing is counted for what did not fit", () => {
  let q = made;
  for (let i = 0; i < QUEUE_MAX; i++) q = appendEvent(q, ev(`q${i}`));
  const spilled = Array.from({ length: 64 }, (_, i) => ev(`s${i}`));
  const batch = outgoing(q, spilled, 0);
  assert.equal(batch.events.length, MAX_EVENTS_PER_BATCH);
  assert.equal(batch.drops, undefined);
});

test("a receipt is applied once, also when its file outlives the write (a crash) or is listed again", () => {
  const q: ReportQueue = { events: [ev("a"), ev("b")], id: "queue-0001", drops: 4, lostSeen: 0 };
  const r = { name: "r1.json", receipt: { ids: ["a"] } };
  const once = applyReceipts(q, [r]);
  assert.deepEqual([ids(once), once.drops, once.applied], [["b"], 4, ["r1.json"]]);
  const again = applyReceipts(parseReportQueue(JSON.stringify(once)), [r]);
  assert.deepEqual(ids(again), ["b"]);
  // Its file removed, then a reader that listed it before reads the queue.
  const later = applyReceipts(applyReceipts(again, []), [{ ...r, receipt: { ids: ["b"] } }]);
  assert.deepEqual(ids(later), ["b"]);
  assert.deepEqual(
    undelivered([ev("a"), ev("c")], [r]).map((e) => e.id),
    ["c"],
  );
  assert.equal(parseReceipt("{bad"), undefined);
  assert.deepEqual(parseReceipt(JSON.stringify(r.receipt)), r.receipt);
});

test("a receipt from before totals takes out the drops it reported, from a queue from before totals", () => {
  // The old os-update reported 3 of the queue's 5 drops and the lost bytes 2..4, then could not edit the queue.
  const old = parseReportQueue(JSON.stringify({ events: [ev("a"), ev("b")], dropped: 5, lostSeen: 2 }));
  const receipt = parseReceipt(JSON.stringify({ ids: ["a"], dropped: 3, lostFrom: 2, lostTo: 4 }));
  assert.deepEqual(receipt, { ids: ["a"], before: { dropped: 3, lostFrom: 2, lostTo: 4 } });
  const after = applyReceipts(old, [{ name: "r0.json", receipt }]);
  assert.deepEqual(
    [ids(after), after.drops, after.lostSeen],
    [["b"], 2, 4],
    "only the 2 not reported remain",
  );
  assert.equal(
    absorbSpill(after, { events: [], damaged: 0 }, 4).drops,
    2,
    "the reported lost bytes not again",
  );
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
  const q = parseReportQueue(JSON.stringify({ events: [ev("a")], retryAt: 1234 }));
  assert.equal(q.retryAt, 1234);
  assert.equal(absorbSpill(q, { events: [ev("b")], damaged: 0 }, 0).retryAt, 1234);
  assert.equal(appendEvent(q, ev("c")).retryAt, 1234);
  assert.equal(applyReceipt(q, { ids: ["a"] }).retryAt, 1234, "cleared by the send");
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
  const batch = outgoing({ events: [check, ev("k1")], id: "queue-0001", drops: 2, lostSeen: 0 }, [], 0);
  const urgent = stateOnly(batch);
  assert.deepEqual(
    urgent?.events.map((e) => e.id),
    ["k1"],
  );
  assert.deepEqual([urgent?.drops, urgent?.receipt.ids], [{ queue: "queue-0001", total: 2 }, ["k1"]]);
  assert.equal(stateOnly(outgoing({ events: [check], drops: 0, lostSeen: 0 }, [], 0)), undefined);
});
