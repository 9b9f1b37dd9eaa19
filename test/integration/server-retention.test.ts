/**
 * Retention of published versions by `os-update-server fetch`: the newest
 * `keep` stay; an older one stays while the fleet's database says a device
 * runs it, a rollout names it or a device is pinned to it, and goes at the
 * next fetch once none does; a database that cannot be read removes nothing.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { runEos } from "../helpers/run.ts";
import { zstdFile } from "../helpers/sample-image.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";
import { openFleetDb, type FleetDb } from "../../src/io/server/fleet/db.ts";
import { FleetStore } from "../../src/io/server/fleet/store.ts";
import { RolloutStore } from "../../src/io/server/fleet/rollouts.ts";
import { parseWaves } from "../../src/core/fleet/rollout.ts";

const name = "EOS.x86_64-AB";
const SHA = "b".repeat(64);

describe("os-update-server fetch: retention of published versions", () => {
  let world: World;
  let database: string;
  const configure = (db = database) =>
    writeServerConfig(
      world,
      [{ image: `${world.origin.url}/${name}.raw.zst`, name, delta_from: 0, keep: 2 }],
      `database: ${db}`,
    );
  const kept = async () => {
    const versions: string[] = [];
    for (const vid of await readdir(join(world.imagesDir, ".versions", name))) {
      const m = JSON.parse(
        await readFile(join(world.imagesDir, ".versions", name, vid, `${name}.manifest.json`), "utf8"),
      ) as {
        version: string;
      };
      versions.push(m.version);
    }
    return versions.sort();
  };
  const release = async (version: string) => {
    await releaseImage(world, name, version, {
      compress: zstdFile,
      payloadBytes: 256 * 1024,
      rootSizeMiB: 8,
    });
    return fetch();
  };
  const fetch = async () => {
    const r = await runEos("os-update-server", ["fetch", "--config", world.config]);
    assert.equal(r.code, 0, r.stderr.toString());
    return r.stderr.toString();
  };
  const fleet = async <T>(
    work: (store: FleetStore, rollouts: RolloutStore, db: FleetDb) => Promise<T>,
  ): Promise<T> => {
    const db = await openFleetDb(database);
    try {
      return await work(new FleetStore(db, () => new Date()), new RolloutStore(db, () => new Date()), db);
    } finally {
      await db.close();
    }
  };
  const runs = (store: FleetStore, device: string, version: string) =>
    store.record(device, {
      device: { image: name, architecture: "x86_64", running: "A", slots: { A: version, B: null } },
      events: [
        {
          id: `evt-${device}-${version}`,
          time: new Date().toISOString(),
          type: "checked",
          version,
          slot: "A",
          sha256: SHA,
          available: false,
          offered: version,
        },
      ],
    });

  before(async () => {
    world = await makeWorld();
    database = `sqlite:${join(world.dir, "state", "fleet.sqlite")}`;
    await configure();
  });
  after(async () => {
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  });

  test("without a fleet database, the newest `keep` versions stay and older ones go", async () => {
    for (const v of ["1.0.0", "2.0.0", "3.0.0"]) await release(v);
    assert.deepEqual(await kept(), ["2.0.0", "3.0.0"]);
  });

  test("a version a device runs, a rollout names or a device is pinned to stays", async () => {
    await fleet(async (store, rollouts) => {
      await runs(store, "dev-old", "2.0.0");
      await rollouts.pin("dev-pinned", "3.0.0");
    });
    let log = await release("4.0.0");
    assert.deepEqual(await kept(), ["2.0.0", "3.0.0", "4.0.0"]);
    assert.match(log, /"kept an old version".*"version":"2\.0\.0".*1 device\(s\) run it/);
    log = await release("5.0.0");
    assert.deepEqual(await kept(), ["2.0.0", "3.0.0", "4.0.0", "5.0.0"]);
    assert.match(log, /"kept an old version".*"version":"3\.0\.0".*pinned to it/);
    // Aborting 5.0.0 would assign 4.0.0 back: the rollout keeps it after 6.0.0.
    await fleet(async (_store, rollouts) => {
      await rollouts.create({
        id: "r5",
        image: name,
        version: "5.0.0",
        previous: "4.0.0",
        filter: { tags: [] },
        waves: parseWaves("100%"),
        soak_seconds: 0,
        error_threshold: 0.2,
        success_threshold: 0.9,
      });
    });
    await release("6.0.0");
    assert.deepEqual(await kept(), ["2.0.0", "3.0.0", "4.0.0", "5.0.0", "6.0.0"]);
  });

  test("once the fleet leaves a version, the next fetch removes it, though the origin did not change", async () => {
    await fleet(async (store, rollouts) => {
      await runs(store, "dev-old", "6.0.0");
      await rollouts.pin("dev-pinned", undefined);
      await rollouts.act("r5", "abort", "test");
    });
    // An aborted rollout still assigns its previous version back: 4.0.0 and 5.0.0 stay.
    let log = await fetch();
    assert.deepEqual(await kept(), ["4.0.0", "5.0.0", "6.0.0"]);
    assert.match(log, /"removed an old version".*"version":"2\.0\.0"/);
    assert.match(log, /"removed an old version".*"version":"3\.0\.0"/);
    // A completed rollout assigns nothing any more.
    await fleet(async (_store, _rollouts, db) => {
      await db.db.updateTable("rollouts").set({ state: "completed" }).where("id", "=", "r5").execute();
    });
    log = await fetch();
    assert.match(log, /"removed an old version".*"version":"4\.0\.0"/);
    assert.deepEqual(await kept(), ["5.0.0", "6.0.0"]);
  });

  test("a fleet database that cannot be read removes nothing, and says so", async () => {
    await configure("postgres://eos@127.0.0.1:1/none");
    const log = await release("7.0.0");
    assert.match(log, /retention: the fleet database cannot be read; no version is removed/);
    assert.deepEqual(await kept(), ["5.0.0", "6.0.0", "7.0.0"]);
    await configure();
    await fetch();
    assert.deepEqual(await kept(), ["6.0.0", "7.0.0"]);
  });
});
