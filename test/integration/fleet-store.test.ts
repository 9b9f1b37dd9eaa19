import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { EventBatch } from "../../src/core/fleet/events.ts";
import { openFleetDb } from "../../src/io/server/fleet/db.ts";
import { FleetStore } from "../../src/io/server/fleet/store.ts";
import { startPostgres, type Postgres } from "../helpers/postgres.ts";

const SHA = "a".repeat(64);
const facts = {
  image: "EOS.x86_64-AB",
  architecture: "x86_64",
  running: "A" as const,
  slots: { A: "1.0.0", B: null },
};
const at = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s)).toISOString();

function checked(id: string, s: number, available: boolean, version = "1.0.0"): EventBatch["events"][number] {
  return {
    id,
    time: at(s),
    type: "checked",
    version,
    slot: "A",
    sha256: SHA,
    available,
    offered: "2.0.0",
  };
}

let pg: Postgres | undefined;
let skipReason: string | undefined;
let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "eos-fleet-store-"));
  const started = await startPostgres();
  if ("unavailable" in started) skipReason = started.unavailable;
  else pg = started;
});

after(async () => {
  await pg?.stop();
  await rm(dir, { recursive: true, force: true });
});

for (const kind of ["sqlite", "postgres"] as const) {
  describe(`fleet store on ${kind}`, () => {
    let spec: string;
    before(async () => {
      if (kind === "sqlite") spec = `sqlite:${join(dir, "fleet.sqlite")}`;
      else if (pg) spec = await pg.freshDatabase();
    });
    const open = async () => new FleetStore(await openFleetDb(spec), () => new Date(Date.UTC(2026, 0, 2)));

    test("a batch registers the device; re-sent events are stored once; state follows the newest event", async (t) => {
      if (!spec) return t.skip(`PostgreSQL cannot start here: ${skipReason}`);
      const store = await open();
      try {
        const first = await store.record("dev-1", { device: facts, events: [checked("evt-0001", 1, true)] });
        assert.deepEqual(first, { stored: 1, duplicates: 0 });
        const written = { ...facts, slots: { A: "1.0.0", B: "2.0.0" } };
        const again = await store.record("dev-1", {
          device: written,
          events: [
            checked("evt-0001", 1, true),
            { id: "evt-0002", time: at(3), type: "written", version: "2.0.0", slot: "B", sha256: SHA },
            {
              id: "evt-0003",
              time: at(2),
              type: "download_started",
              version: "2.0.0",
              path: "full",
              bytes: 10,
            },
          ],
          dropped: 2,
        });
        assert.deepEqual(again, { stored: 2, duplicates: 1 });
        // A late event from the queue goes into the history without moving the state back.
        await store.record("dev-1", { device: written, events: [checked("evt-0000", 0, false)] });
        const found = await store.device("dev-1", 100);
        assert.ok(found);
        assert.equal(found.device.state, "written");
        assert.equal(found.device.other_version, "2.0.0");
        assert.equal(found.device.running_version, "1.0.0");
        assert.equal(found.device.dropped, 2);
        assert.equal(found.device.image, "EOS.x86_64-AB");
        assert.deepEqual(
          found.events.map((e) => e.data.id),
          ["evt-0001", "evt-0002", "evt-0003", "evt-0000"],
          "history in arrival order, each event once",
        );
        assert.equal((await store.device("dev-1", 2))?.events.length, 2);
      } finally {
        await store.close();
      }
    });

    test("filters by tag, version and state; tags replace; admin tokens by role; state survives reopening", async (t) => {
      if (!spec) return t.skip(`PostgreSQL cannot start here: ${skipReason}`);
      let store = await open();
      try {
        await store.record("dev-2", {
          device: { ...facts, slots: { A: "2.0.0", B: "1.0.0" } },
          events: [checked("evt-1001", 5, false, "2.0.0")],
        });
        await store.setTags("dev-2", ["canary", "lab"]);
        await assert.rejects(store.setTags("nope", ["x"]), /no device nope/);
        const ids = async (f: Parameters<FleetStore["listDevices"]>[0]) =>
          (await store.listDevices(f)).map((d) => d.id);
        assert.deepEqual(await ids({}), ["dev-1", "dev-2"]);
        assert.deepEqual(await ids({ tag: "canary" }), ["dev-2"]);
        assert.deepEqual(await ids({ version: "2.0.0" }), ["dev-2"]);
        assert.deepEqual(await ids({ state: "written" }), ["dev-1"]);
        assert.deepEqual(await ids({ state: "current", tag: "lab" }), ["dev-2"]);
        const token = await store.addAdminToken("ops", "operator");
        await assert.rejects(store.addAdminToken("ops", "admin"), /exists already/);
        assert.deepEqual(await store.authenticateAdmin(token), { name: "ops", role: "operator" });
        assert.equal(await store.authenticateAdmin(`${token}x`), undefined);
      } finally {
        await store.close();
      }
      store = await open();
      try {
        assert.deepEqual(
          (await store.listDevices({ tag: "lab" })).map((d) => [d.id, d.tags]),
          [["dev-2", ["canary", "lab"]]],
        );
        assert.deepEqual(
          (await store.listAdminTokens()).map((t) => t.name),
          ["ops"],
        );
        await store.revokeAdminToken("ops");
        assert.deepEqual(await store.listAdminTokens(), []);
      } finally {
        await store.close();
      }
    });

    test("a queue's drop total is added once however often it is sent; a new queue's whole; an old device's count as sent", async (t) => {
      if (!spec) return t.skip(`PostgreSQL cannot start here: ${skipReason}`);
      // A clock that moves: which queues the store keeps goes by when it last heard from each.
      let tick = 0;
      const store = new FleetStore(
        await openFleetDb(spec),
        () => new Date(Date.UTC(2026, 0, 3) + tick++ * 1000),
      );
      try {
        let n = 0;
        const send = async (more: Partial<EventBatch>) => {
          await store.record("dev-3", {
            device: facts,
            events: [checked(`evt-3${String(n++).padStart(3, "0")}`, 7, false)],
            ...more,
          });
          return (await store.device("dev-3", 1))?.device.dropped;
        };
        const run = { queue: "run-queue-boot1", total: 3 };
        assert.equal(await send({ drops: run }), 3);
        assert.equal(await send({ drops: run }), 3, "the same total from a second process adds nothing");
        assert.equal(await send({ drops: { ...run, total: 5 } }), 5, "a higher total adds the difference");
        assert.equal(await send({ drops: run }), 5, "a total overtaken by a later one adds nothing");
        const registry = { queue: "registry-queue", total: 4 };
        assert.equal(await send({ drops: registry }), 9, "a new queue adds its whole total");
        assert.equal(
          await send({ drops: { ...run, total: 6 } }),
          10,
          "queues taking turns: each counts from its own",
        );
        assert.equal(await send({ drops: registry }), 10);
        assert.equal(await send({ dropped: 2 }), 12, "a device from before totals: its count as sent");
        assert.equal(await send({ dropped: 2 }), 14);
        // A /run queue per boot, while the registry queue (total 4) goes on sending: the 16 queues heard
        // from last are kept, and none of them adds again; older ones are let go, and would count anew.
        for (let boot = 2; boot <= 17; boot++) {
          await send({ drops: { queue: `run-queue-boot${boot}`, total: 1 } });
          await send({ drops: registry });
        }
        assert.equal(await send({ drops: { queue: "run-queue-boot3", total: 1 } }), 30);
        assert.equal(
          await send({ drops: registry }),
          30,
          "the registry queue, heard from all along, is kept",
        );
        assert.equal(
          await send({ drops: { queue: "run-queue-boot2", total: 1 } }),
          31,
          "17 queues ago: let go",
        );
      } finally {
        await store.close();
      }
    });
  });
}
