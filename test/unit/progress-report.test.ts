import { test } from "node:test";
import assert from "node:assert/strict";
import { progressReports } from "../../src/io/update/progress-report.ts";
import type { NewEvent, UpdateEvents } from "../../src/io/update/reporter.ts";

const silent = { add: () => undefined, done: () => undefined };

test("download_progress: at most once per interval, never more bytes than the total", async () => {
  let t = 0;
  const noted: NewEvent[] = [];
  const events: UpdateEvents = { note: async (e) => void noted.push(e), flush: async () => undefined };
  const reports = progressReports(events, "2.0.0", { now: () => new Date(t) });
  const p = reports.track(silent, 100);
  for (let s = 0; s < 25; s++) {
    t = s * 1000;
    p.add(5);
    await reports.settle();
  }
  assert.deepEqual(
    noted.map((e) => (e.type === "download_progress" ? [e.bytes, e.total] : e.type)),
    [
      [55, 100],
      [100, 100],
    ],
  );
});

test("download_progress: a report still being queued makes the next one skip, not wait", async () => {
  let release = () => undefined as void;
  let calls = 0;
  const events: UpdateEvents = {
    note: () => {
      calls++;
      return new Promise<void>((resolve) => (release = resolve));
    },
    flush: async () => undefined,
  };
  const reports = progressReports(events, "2.0.0", { everyMs: 0, now: () => new Date() });
  const p = reports.track(silent, 10);
  p.add(1);
  p.add(1);
  p.add(1);
  assert.equal(calls, 1);
  release();
  await reports.settle();
  p.add(1);
  assert.equal(calls, 2);
  release();
  await reports.settle();
});
