/**
 * What the rollouts page polls costs the database one reading per rollout
 * per PROGRESS_FRESH_MS, however many pages are open: DashboardData over a
 * counting stand-in for the stores (the browser test covers the real ones).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { DashboardData, PROGRESS_FRESH_MS } from "../../src/io/server/fleet/dashboard-data.ts";
import { EosError } from "../../src/core/errors.ts";

/** Only what a progress reading uses of a rollout: the stand-in store hands it out as it is. */
const rollout = {
  image: "EOS",
  version: "2.0.0",
  filter: { tags: [] },
  waves: [{ percent: 100 }],
  current_wave: 0,
  wave_started: "2026-12-01T11:00:00.000Z",
};

function counting() {
  const reads = { rollouts: 0, devices: 0 };
  const rollouts = {
    get: async (id: string) => {
      reads.rollouts++;
      if (!/^r\d+$/.test(id)) throw new EosError("NOT_FOUND", `no rollout ${id}`);
      return { ...rollout, id };
    },
  };
  const store = {
    listDevices: async () => {
      reads.devices++;
      return [
        { id: "a", tags: [], state: "committed", running_version: "2.0.0", last_event_at: null },
        { id: "b", tags: [], state: "current", running_version: "1.0.0", last_event_at: null },
      ];
    },
  };
  const data = new DashboardData({} as never, store as never, rollouts as never, {} as never);
  return { data, reads };
}

test("polls within PROGRESS_FRESH_MS share one reading; later ones read again", async () => {
  const { data, reads } = counting();
  const t0 = 1_000_000;
  const [a, b] = await Promise.all([data.rolloutProgress("r1", t0), data.rolloutProgress("r1", t0)]);
  assert.deepEqual(
    a.waves.map((w) => [w.members, w.succeeded]),
    [[2, 1]],
  );
  assert.equal(b, a);
  await data.rolloutProgress("r1", t0 + PROGRESS_FRESH_MS - 1);
  assert.deepEqual(reads, { rollouts: 1, devices: 1 });
  await data.rolloutProgress("r1", t0 + PROGRESS_FRESH_MS);
  assert.deepEqual(reads, { rollouts: 2, devices: 2 });
  data.forgetProgress("r1");
  await data.rolloutProgress("r1", t0 + PROGRESS_FRESH_MS);
  assert.deepEqual(reads, { rollouts: 3, devices: 3 }, "a change made here is read at once");
});

test("a failed reading is not kept, and readings of many rollouts do not pile up", async () => {
  const { data, reads } = counting();
  for (let i = 0; i < 3; i++)
    await assert.rejects(data.rolloutProgress("gone", 5), (e: unknown) => e instanceof EosError);
  assert.equal(reads.rollouts, 3, "each poll of a missing rollout asks again");
  for (let i = 0; i < 200; i++) await data.rolloutProgress(`r${i}`, (i * PROGRESS_FRESH_MS) / 10);
  const kept = (data as unknown as { progressRead: Map<string, unknown> }).progressRead;
  assert.ok(kept.size <= 64, `${kept.size} readings kept`);
});
