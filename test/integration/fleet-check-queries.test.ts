/**
 * What a device's check costs the database: the manifest, the signature and
 * the `checked` report of one check (os-update --check) against the real
 * routes (http.ts, fleet/api.ts, fleet/assigned.ts) on SQLite and on
 * PostgreSQL, with a rollout running and maintenance windows by tag. On
 * PostgreSQL every statement is a round trip: at 15 a check, a server at
 * 10k devices could not keep up (README, bench:fleet). The caches that cut
 * it hold changes from another replica back for CHECK_CACHE_MS at most,
 * which is checked here too, with a second set of stores on the same
 * database playing the other replica.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Server } from "node:http";
import { CHECK_CACHE_MS } from "../../src/core/fleet/ttl-cache.ts";
import { WINDOW_HEADER } from "../../src/core/fleet/window.ts";
import type { Manifest } from "../../src/core/manifest.ts";
import { silentLogger } from "../../src/io/log.ts";
import { controlPlane } from "../../src/io/server/fleet/api.ts";
import { versionResolver, windowLookup } from "../../src/io/server/fleet/assigned.ts";
import { openFleetDb, type FleetDb } from "../../src/io/server/fleet/db.ts";
import { DeviceTokenStore } from "../../src/io/server/fleet/device-tokens.ts";
import { RolloutStore } from "../../src/io/server/fleet/rollouts.ts";
import { FleetStore } from "../../src/io/server/fleet/store.ts";
import { createUpdateServer } from "../../src/io/server/http.ts";
import type { ImageStore, PublishedVersion } from "../../src/io/server/store.ts";
import { TokenStore } from "../../src/io/server/tokens.ts";
import { startPostgres, type Postgres } from "../helpers/postgres.ts";

const NAME = "EOS.x86_64-AB";
const SHA = "c".repeat(64);
/** Statements per check once the image's rollouts are read: the token, the pin and tags, the report's 5. */
const PER_CHECK = 7;

/** Versions 1 and 2 published, as far as a check reads them (the manifest path). */
function images(): ImageStore {
  const version = (v: string): PublishedVersion => ({
    name: NAME,
    vid: `vid-${v}`,
    manifest: { version: v, partitions: { root: { sha256: v.repeat(64) } } } as unknown as Manifest,
    manifestBytes: Buffer.from(`manifest of ${v}`),
    signatureBytes: Buffer.from(`signature of ${v}`),
    ranges: {},
    deltaIndexBytes: undefined,
    open: () => Promise.resolve(undefined),
  });
  const versions = new Map(["1", "2"].map((v) => [v, version(v)]));
  return {
    url: "test",
    kind: "directory",
    current: (name: string) => Promise.resolve(name === NAME ? versions.get("2") : undefined),
    find: (name: string, v: string) => Promise.resolve(name === NAME ? versions.get(v) : undefined),
    list: () => Promise.resolve([NAME]),
    check: () => Promise.resolve(),
  } as unknown as ImageStore;
}

interface Replica {
  db: FleetDb;
  store: FleetStore;
  rollouts: RolloutStore;
  tokens: DeviceTokenStore;
  server: Server;
  url: string;
}

let pg: Postgres | undefined;
let skipReason: string | undefined;
let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "eos-check-queries-"));
  await mkdir(join(dir, "tokens"), { mode: 0o700 });
  const started = await startPostgres();
  if ("unavailable" in started) skipReason = started.unavailable;
  else pg = started;
});

after(async () => {
  await pg?.stop();
  await rm(dir, { recursive: true, force: true });
});

for (const kind of ["sqlite", "postgres"] as const) {
  describe(`a device's check on ${kind}`, () => {
    let clock = Date.UTC(2026, 11, 2, 12);
    const now = () => new Date(clock);
    let spec: string | undefined;
    const replicas: Replica[] = [];

    async function replica(): Promise<Replica> {
      const db = await openFleetDb(spec as string);
      const store = new FleetStore(db, now);
      const rollouts = new RolloutStore(db, now);
      const tokens = new DeviceTokenStore(db, now);
      const logger = silentLogger();
      const imageStore = images();
      const server = createUpdateServer({
        store: imageStore,
        tokens: new TokenStore(join(dir, "tokens")),
        logger,
        control: controlPlane(store, tokens, { store: rollouts, images: imageStore, onError: () => {} }),
        resolve: versionResolver(imageStore, rollouts, undefined, logger, now),
        windowOf: windowLookup(
          { current: async () => [{ tags: ["canary"], window: "02:00-04:00" }], fallback: [] },
          rollouts,
          logger,
        ),
      });
      server.listen(0, "127.0.0.1");
      await new Promise((r) => server.once("listening", r));
      const r = {
        db,
        store,
        rollouts,
        tokens,
        server,
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
      };
      replicas.push(r);
      return r;
    }

    before(async () => {
      if (kind === "sqlite") spec = `sqlite:${join(dir, "fleet.sqlite")}`;
      else if (pg) spec = await pg.freshDatabase();
    });

    after(async () => {
      for (const r of replicas) {
        r.server.close();
        r.server.closeAllConnections();
        await r.store.close();
      }
    });

    const get = (r: Replica, token: string, file: string) =>
      fetch(`${r.url}/v1/images/${NAME}/${file}`, { headers: { authorization: `Bearer ${token}` } });

    const report = (r: Replica, token: string, ids: string[]) =>
      fetch(`${r.url}/v1/events`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({
          device: { image: NAME, architecture: "x86_64", running: "A", slots: { A: "1", B: null } },
          events: ids.map((id) => ({
            id,
            type: "checked",
            time: now().toISOString(),
            version: "1",
            slot: "A",
            sha256: SHA,
            offered: "2",
            available: true,
          })),
        }),
      });

    /** One check as os-update sends it; what it was offered, its window, and the statements it cost. */
    async function check(r: Replica, token: string, events = ["e1"]) {
      const before = r.db.stats.queries;
      const manifest = await get(r, token, "manifest.json");
      assert.equal(manifest.status, 200, await manifest.clone().text());
      const sig = await get(r, token, "manifest.json.sig");
      assert.equal(sig.status, 200);
      const offered = (await manifest.text()).replace("manifest of ", "");
      // The signature is the manifest's: both requests got the same assignment.
      assert.equal(await sig.text(), `signature of ${offered}`);
      const sent = await report(
        r,
        token,
        events.map((e) => `${token.slice(-8)}-${clock}-${e}`),
      );
      assert.equal(sent.status, 200, await sent.text());
      return {
        offered,
        window: manifest.headers.get(WINDOW_HEADER),
        queries: r.db.stats.queries - before,
      };
    }

    test("with a rollout running, a check costs the database 7 statements, however many events it reports", async (t) => {
      if (!spec) return t.skip(`PostgreSQL cannot start here: ${skipReason}`);
      const r = await replica();
      const devices = [];
      for (let i = 0; i < 6; i++) devices.push(await r.tokens.enrol("fleet", `dev${i}`));
      for (const d of devices.slice(0, 3)) await r.store.setTags(d.device, ["canary"]);
      await r.rollouts.create({
        id: "r2",
        image: NAME,
        version: "2",
        previous: "1",
        filter: { tags: [] },
        waves: [{ tag: "canary" }, { percent: 100 }],
        soak_seconds: 3600,
        error_threshold: 0.5,
        success_threshold: 0.9,
      });
      // The first check of the image also reads its rollouts, once for every device in CHECK_CACHE_MS.
      const first = await check(r, devices[0]!.token);
      assert.deepEqual([first.offered, first.window], ["2", "02:00-04:00"]);
      assert.ok(first.queries <= PER_CHECK + 1, `the first check cost ${first.queries} statements`);
      for (const [i, d] of devices.entries()) {
        if (i === 0) continue;
        const c = await check(r, d.token, i === 5 ? ["e1", "e2", "e3"] : ["e1"]);
        const canary = i < 3;
        assert.deepEqual(
          [c.offered, c.window],
          canary ? ["2", "02:00-04:00"] : ["1", null],
          `${d.device}: the canary wave gets 2 in its window, the others stay on 1`,
        );
        assert.ok(c.queries <= PER_CHECK, `${d.device}'s check cost ${c.queries} statements`);
      }
      const stored = await r.store.device(devices[5]!.device, 10);
      assert.equal(stored?.events.length, 3, "the three events of one report are all stored");
      // A report re-sent (its events already stored) stores nothing twice, nor an id twice in one batch.
      const ids = ["resent-1", "resent-2", "resent-3"];
      const again = await report(r, devices[5]!.token, ids);
      assert.deepEqual(await again.json(), { stored: 3, duplicates: 0 });
      const twice = await report(r, devices[5]!.token, [...ids, "resent-4", "resent-4"]);
      assert.deepEqual(await twice.json(), { stored: 1, duplicates: 4 });
    });

    test(`an abort and a revocation through another replica hold within ${CHECK_CACHE_MS} ms; through this one at once`, async (t) => {
      if (!spec) return t.skip(`PostgreSQL cannot start here: ${skipReason}`);
      const [r1] = replicas as [Replica];
      const r2 = await replica();
      const d = await r1.tokens.enrol("fleet", "late");
      await r1.store.setTags(d.device, ["canary"]);
      const start = clock;
      assert.equal((await check(r1, d.token)).offered, "2");
      assert.equal((await check(r2, d.token)).offered, "2");
      // Replica 2 aborts: it offers the previous version at once, replica 1 only after the bound.
      await r2.rollouts.act("r2", "abort", "test");
      assert.equal((await check(r2, d.token)).offered, "1", "an abort counts at once where it was made");
      clock = start + CHECK_CACHE_MS - 1;
      assert.equal((await check(r1, d.token)).offered, "2", "within the bound");
      clock = start + CHECK_CACHE_MS;
      assert.equal(
        (await check(r1, d.token)).offered,
        "1",
        "an abort on another replica holds after the bound",
      );
      // Replica 2 revokes the token that replica 1 has just read again.
      await r2.tokens.revoke(d.device);
      clock = start + 2 * CHECK_CACHE_MS - 1;
      assert.equal((await get(r1, d.token, "manifest.json")).status, 200, "within the bound");
      clock = start + 2 * CHECK_CACHE_MS;
      const refused = await get(r1, d.token, "manifest.json");
      assert.equal(refused.status, 401, "a token revoked on another replica stops within the bound");
      assert.equal(refused.headers.get("x-eos-error"), "REVOKED");
      // Through the replica that made the change, at once.
      const e = await r2.tokens.enrol("fleet", "other");
      assert.equal((await check(r2, e.token)).offered, "1", "the aborted rollout assigns 1");
      await r2.rollouts.pin(e.device, "2");
      assert.equal((await check(r2, e.token)).offered, "2", "a pin counts at once");
      // Tags set through the admin API choose the window of the very next check.
      assert.equal((await check(r2, e.token)).window, null);
      const admin = await r2.store.addAdminToken("ops", "operator");
      const tagged = await fetch(`${r2.url}/v1/admin/devices/${e.device}/tags`, {
        method: "PUT",
        headers: { authorization: `Bearer ${admin}`, "content-type": "application/json" },
        body: JSON.stringify({ tags: ["canary"] }),
      });
      assert.equal(tagged.status, 200, await tagged.text());
      assert.equal((await check(r2, e.token)).window, "02:00-04:00", "new tags count at once");
      await r2.tokens.revoke(e.device);
      assert.equal((await get(r2, e.token, "manifest.json")).status, 401, "a revocation counts at once");
    });
  });
}
