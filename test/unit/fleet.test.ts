import { test } from "node:test";
import assert from "node:assert/strict";
import { allows, normaliseTags, parseDeviceFilter } from "../../src/core/fleet/admin.ts";
import {
  applyBatch,
  describeIssue,
  dropsAdded,
  EMPTY_INVENTORY,
  eventBatchSchema,
  MAX_EVENTS_PER_BATCH,
  type EventBatch,
} from "../../src/core/fleet/events.ts";

const SHA = "0".repeat(64);
const device = { image: "EOS.x86_64-AB", architecture: "x86_64" };
const time = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s)).toISOString();

function refusal(body: unknown): string {
  const r = eventBatchSchema.safeParse(body);
  assert.equal(r.success, false);
  return r.success ? "" : describeIssue(r.error);
}

test("event batches: every type parses; a bad one is refused with the field named", () => {
  const events: EventBatch["events"] = [
    {
      id: "e-0000001",
      time: time(1),
      type: "checked",
      version: "1.0",
      slot: "A",
      sha256: SHA,
      available: true,
    },
    { id: "e-0000002", time: time(2), type: "download_started", version: "2.0", path: "delta", bytes: 5 },
    { id: "e-0000003", time: time(3), type: "download_progress", version: "2.0", bytes: 5, total: 9 },
    { id: "e-0000004", time: time(4), type: "written", version: "2.0", slot: "B", sha256: SHA },
    { id: "e-0000005", time: time(5), type: "kexec", version: "2.0", slot: "B" },
    { id: "e-0000006", time: time(6), type: "committed", version: "2.0", slot: "B" },
    { id: "e-0000007", time: time(7), type: "fell_back", version: "2.0", slot: "B" },
    { id: "e-0000008", time: time(8), type: "rolled_back", version: "1.0", slot: "A" },
    { id: "e-0000009", time: time(9), type: "failed", stage: "apply", code: "NETWORK", message: "down" },
  ];
  assert.equal(eventBatchSchema.safeParse({ device, events }).success, true);
  assert.match(refusal({ device, events: [{ ...events[0], sha256: "xyz" }] }), /^events\[0\]\.sha256: /);
  assert.match(refusal({ device, events: [{ ...events[0], type: "exploded" }] }), /^events\[0\]\.type: /);
  assert.match(refusal({ device, events: [{ ...events[4], extra: 1 }] }), /^events\[0\]: unknown key extra/);
  assert.match(refusal({ device: { ...device, image: "../x" }, events }), /^device\.image: /);
  assert.match(refusal({ device, events: [] }), /^events: /);
  const many = Array.from({ length: MAX_EVENTS_PER_BATCH + 1 }, () => events[4]);
  assert.match(refusal({ device, events: many }), /^events: /);
});

test("inventory: state follows the newest event; a late event does not move it back; facts are the latest word", () => {
  const inv = applyBatch(EMPTY_INVENTORY, {
    device: { ...device, running: "A", slots: { A: "1.0", B: "2.0" }, registry: "active" },
    events: [
      { id: "e-0000005", time: time(5), type: "kexec", version: "2.0", slot: "B" },
      { id: "e-0000004", time: time(4), type: "written", version: "2.0", slot: "B", sha256: SHA },
    ],
  });
  assert.equal(inv.state, "rebooting");
  assert.equal(inv.last_event, "kexec");
  assert.equal(inv.running_version, "1.0");
  assert.equal(inv.other_version, "2.0");
  assert.equal(inv.registry, "active");
  const late = applyBatch(inv, {
    device,
    events: [
      { id: "e-0000001", time: time(1), type: "failed", stage: "check", code: "NETWORK", message: "x" },
    ],
  });
  assert.equal(late.state, "rebooting", "an older event is history, not state");
  const committed = applyBatch(inv, {
    device,
    events: [{ id: "e-0000006", time: time(6), type: "committed", version: "2.0", slot: "B" }],
  });
  assert.deepEqual(
    [committed.state, committed.running_slot, committed.running_version],
    ["committed", "B", "2.0"],
  );
});

test("admin: roles are ordered; filters and tags are checked and name the parameter at fault", () => {
  assert.equal(allows("admin", "operator"), true);
  assert.equal(allows("operator", "operator"), true);
  assert.equal(allows("viewer", "operator"), false);
  assert.deepEqual(
    parseDeviceFilter(new URLSearchParams("tag=canary&version=2.0&state=fell-back&image=EOS.x86_64-AB")),
    { tag: "canary", version: "2.0", state: "fell-back", image: "EOS.x86_64-AB" },
  );
  assert.throws(() => parseDeviceFilter(new URLSearchParams("state=happy")), /state: one of/);
  assert.throws(() => parseDeviceFilter(new URLSearchParams("colour=red")), /unknown filter "colour"/);
  assert.throws(() => parseDeviceFilter(new URLSearchParams("tag=a b")), /tag: not a tag/);
  assert.deepEqual(normaliseTags(["lab", "canary", "lab"]), ["canary", "lab"]);
  assert.throws(() => normaliseTags(["ok", "not ok"]), /tags\[1\]: not a tag/);
});

test("drops: a queue's total adds what the server has not seen of it; an old device's count adds itself", () => {
  const drops = { queue: "queue-0001", total: 5 };
  assert.equal(dropsAdded({ drops }, undefined), 5, "a queue not seen: its whole total");
  assert.equal(dropsAdded({ drops }, 5), 0, "the same total again");
  assert.equal(dropsAdded({ drops }, 3), 2);
  assert.equal(dropsAdded({ drops }, 7), 0, "overtaken by a later total: never negative");
  assert.equal(dropsAdded({ dropped: 4 }, undefined), 4);
  assert.equal(dropsAdded({}, undefined), 0);
  const event = { id: "e-0000001", time: time(1), type: "kexec", version: "2.0", slot: "B" };
  assert.equal(eventBatchSchema.safeParse({ device, events: [event], drops }).success, true);
  assert.match(refusal({ device, events: [event], drops: { ...drops, queue: "a b" } }), /^drops\.queue: /);
  assert.match(refusal({ device, events: [event], drops: { ...drops, total: -1 } }), /^drops\.total: /);
});
