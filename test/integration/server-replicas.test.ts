/**
 * Replicas of the update server (issue 16, item 3): two `os-update-server
 * serve` processes (the bundle, as real processes, on two ports) share a
 * real PostgreSQL and an S3 bucket (s3rver) and hold nothing of their own.
 * Two fetches at once (as on two hosts: each its own images directory)
 * publish a version once: the PostgreSQL advisory lock makes the second wait
 * and then find it published; one that cannot get the lock within
 * publish_lock_wait skips. Both replicas serve what a fetch published. Real
 * devices (os-update on loop-attached disk files, booted by the test), each
 * with one replica as update.url and the other in update.mirrors, go
 * through a two-wave rollout: a pause through replica 1's admin API holds
 * a device asking replica 2; a resume through replica 2 opens the next
 * wave; replica 1 is SIGKILLed in the middle of a device's download and the
 * device resumes on replica 2 at the byte it had, and the slot verifies.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { once } from "node:events";
import { copyFile, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import pg from "pg";
import { runEos } from "../helpers/run.ts";
import { makeTestCert, startServer, type RunningServer, type TestCert } from "../helpers/serve.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";
import { makeDevice, type TestDevice } from "../helpers/device.ts";
import { zstdFile } from "../helpers/sample-image.ts";
import { startPostgres, type Postgres } from "../helpers/postgres.ts";
import { startS3, S3_KEY, type TestS3 } from "../helpers/s3.ts";
import { startFlakyProxy, type FlakyProxy } from "../helpers/flaky-proxy.ts";
import { httpsCall } from "../helpers/fleet-server.ts";
import { parseWaves, waveOf } from "../../src/core/fleet/rollout.ts";

const NAME = "EOS.x86_64-AB";
const BUCKET = "eos-images";
const PREFIX = "fleet/";
const ROLLOUT = "r-replicas";
const WAVES = "50%,100%";
const MiB = 1024 * 1024;
const env = { ...process.env, ...S3_KEY };
const RELEASE = { payloadBytes: 3 * MiB, rootSizeMiB: 8, compress: zstdFile };

interface Manifest {
  version: string;
  partitions: { root: { sha256: string; size: number; data_bytes?: number } };
}

interface Replica {
  server: RunningServer;
  /** Its JSON log lines (from when it listened). */
  log: Array<Record<string, unknown>>;
}

/** Device ids: two in each wave of the rollout, so each wave has a device per replica. */
function pickDevices(): { first: string[]; second: string[] } {
  const waves = { id: ROLLOUT, waves: parseWaves(WAVES) };
  const first: string[] = [];
  const second: string[] = [];
  for (let i = 0; first.length < 2 || second.length < 2; i++) {
    const id = `dev-${i}`;
    const list = waveOf(waves, id, []) === 0 ? first : second;
    if (list.length < 2) list.push(id);
  }
  return { first, second };
}

describe("update server replicas on PostgreSQL + S3", () => {
  let world: World;
  let s3: TestS3;
  let pgc: Postgres | undefined;
  let unavailable = "";
  let database = "";
  let tls: TestCert;
  let originProxy: FlakyProxy;
  let tokensDir: string;
  let adminToken = "";
  const tokens = new Map<string, string>();
  const replicas: Replica[] = [];
  const devices = new Map<string, TestDevice>();
  let v1: Manifest;
  let v2: Manifest;
  let deviceImage: string;
  const { first, second } = pickDevices();
  /** The wave-2 device whose update.url is replica 1 behind a slow link: replica 1 dies under its download. */
  const victim = second[1] as string;
  let killAt: number | undefined;
  /** Bytes the victim's link has carried so far. */
  let carried = 0;
  let killProxy: FlakyProxy;

  const fetchAs = (imagesDir: string, config = world.config) =>
    runEos("os-update-server", ["fetch", "--config", config, "--images-dir", imagesDir], { env });
  /** The admin API of one replica (as `os-update-server rollout … --server` calls it). */
  const admin = async (replica: Replica, method: string, path: string, body?: unknown) => {
    const r = await httpsCall(replica.server.url, tls, method, `/v1/admin/rollouts${path}`, {
      token: adminToken,
      ...(body === undefined ? {} : { body }),
    });
    assert.equal(r.status, method === "POST" && path === "" ? 201 : 200, r.text);
    return JSON.parse(r.text) as { rollout: { state: string; current_wave: number; previous: string } };
  };
  const offered = async (replica: Replica, id: string) => {
    const r = await httpsCall(replica.server.url, tls, "GET", `/v1/images/${NAME}/manifest.json`, {
      token: tokens.get(id) as string,
    });
    assert.equal(r.status, 200, r.text);
    return (JSON.parse(r.text) as Manifest).version;
  };
  const show = (replica: Replica) => admin(replica, "GET", `/${ROLLOUT}`);
  const until = async <T>(what: string, probe: () => Promise<T>, ok: (v: T) => boolean, ms = 10_000) => {
    const deadline = Date.now() + ms;
    for (;;) {
      const v = await probe();
      if (ok(v)) return v;
      if (Date.now() > deadline) assert.fail(`${what}: still ${JSON.stringify(v)}`);
      await new Promise((r) => setTimeout(r, 150));
    }
  };
  /** Complete versions of NAME in the bucket (those with their ranges.json). */
  const versionsInBucket = async () =>
    (await s3.keys(BUCKET, `${PREFIX}${NAME}/`)).filter((k) => k.endsWith(`/${NAME}.ranges.json`)).length;
  const startReplica = async (): Promise<Replica> => {
    const server = await startServer({ config: world.config, tokensDir, tls, env });
    const log: Array<Record<string, unknown>> = [];
    let buffer = "";
    server.child.stdout?.on("data", (s: string) => {
      buffer += s;
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        try {
          log.push(JSON.parse(line) as Record<string, unknown>);
        } catch {
          // not a log line
        }
      }
    });
    return { server, log };
  };
  const rootRequests = (r: Replica) =>
    r.log.filter((l) => l.msg === "request" && String(l.path).endsWith(`/${NAME}/root`));
  const manifestOf = async (raw: string) =>
    JSON.parse(await readFile(`${raw}.manifest.json`, "utf8")) as Manifest;

  before(async () => {
    const [started, made] = await Promise.all([startPostgres(), makeWorld()]);
    world = made;
    if ("unavailable" in started) {
      unavailable = started.unavailable;
      return;
    }
    pgc = started;
    database = await pgc.freshDatabase();
    s3 = await startS3(join(world.dir, "s3"), [BUCKET]);
    // The origin behind a slow link: a fetch's download takes long enough for a second one to meet it.
    originProxy = await startFlakyProxy(Number(new URL(world.origin.url).port), Infinity, 0, 3 * MiB);
    await writeServerConfig(
      world,
      // No deltas: the devices take the full stream, whose resume on another replica this test is about.
      [{ image: `http://127.0.0.1:${originProxy.port}/${NAME}.raw.zst`, name: NAME, delta_from: 0 }],
      [
        `database: ${database}`,
        `state_dir: ${join(world.dir, "state")}`,
        `storage: s3://${BUCKET}/fleet`,
        "s3:",
        `  endpoint: ${s3.endpoint}`,
        "  region: us-east-1",
        "  force_path_style: true",
        "serve:",
        "  rollout_interval: 500ms",
      ].join("\n"),
    );
    const raw1 = await releaseImage(world, NAME, "1.0.0", RELEASE);
    v1 = await manifestOf(raw1);
    deviceImage = join(world.dir, "device-v1.raw");
    await copyFile(raw1, deviceImage);
    const fetched = await fetchAs(join(world.dir, "images-0"));
    assert.equal(fetched.code, 0, fetched.stderr);
    tls = await makeTestCert(world.dir);
    tokensDir = join(world.dir, "tokens");
    const [ops] = await Promise.all([
      runEos(
        "os-update-server",
        ["admin-token", "add", "ops", "--role", "operator", "--config", world.config],
        {
          env,
        },
      ),
      ...[...first, ...second].map(async (id) => {
        const r = await runEos("os-update-server", ["token", "add", id, "--tokens-dir", tokensDir]);
        assert.equal(r.code, 0, r.stderr);
        tokens.set(id, r.stdout.toString().trim());
      }),
    ]);
    assert.equal(ops.code, 0, ops.stderr);
    adminToken = ops.stdout.toString().trim();
    replicas.push(...(await Promise.all([startReplica(), startReplica()])));
    // The victim reaches replica 1 over a slow link, so its download is still running when replica 1 dies.
    killProxy = await startFlakyProxy(replicas[0]?.server.port as number, Infinity, 0, 2 * MiB, (total) => {
      carried = total;
      if (killAt !== undefined && total > killAt) {
        killAt = undefined;
        replicas[0]?.server.child.kill("SIGKILL");
        // The host is gone with it: on loopback the kernel's buffers would still hand over what it wrote.
        void killProxy.close();
      }
    });
  });

  after(async () => {
    for (const r of replicas) r.server.child.kill("SIGKILL");
    for (const d of devices.values()) await d.close();
    await killProxy?.close();
    await originProxy?.close();
    await s3?.close();
    await pgc?.stop();
    if (world) {
      await world.origin.close();
      await rm(world.dir, { recursive: true, force: true });
    }
  });

  test("two fetches at once publish a version once; both replicas serve it", async (t) => {
    if (!pgc) return t.skip(`PostgreSQL cannot start here: ${unavailable}`);
    for (const r of replicas) assert.equal(await offered(r, first[0] as string), "1.0.0");
    v2 = await manifestOf(await releaseImage(world, NAME, "2.0.0", RELEASE));
    const [a, b] = await Promise.all([
      fetchAs(join(world.dir, "images-a")),
      fetchAs(join(world.dir, "images-b")),
    ]);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(b.code, 0, b.stderr);
    const outputs = [a.stdout.toString(), b.stdout.toString()].sort();
    assert.deepEqual(
      outputs,
      [`${NAME}: published 2.0.0\n`, `${NAME}: unchanged 2.0.0\n`],
      a.stderr + b.stderr,
    );
    const waiter = a.stdout.toString().includes("unchanged") ? a : b;
    assert.match(waiter.stderr, /"waiting for another fetch to publish"/);
    assert.doesNotMatch(waiter.stderr, /"published"/);
    assert.equal(await versionsInBucket(), 2, "1.0.0 and 2.0.0, each once");
    // Each replica re-reads the bucket's pointer (at most a second old): both serve what the fetch published.
    for (const r of replicas)
      await until(
        "the replica serves 2.0.0",
        () => offered(r, first[0] as string),
        (v) => v === "2.0.0",
        3000,
      );

    // A fetch that cannot get the lock within publish_lock_wait skips the image, and says so.
    const short = join(world.dir, "short-wait.yml");
    await writeFile(short, `${await readFile(world.config, "utf8")}publish_lock_wait: 1s\n`);
    const holder = new pg.Client({ connectionString: database });
    await holder.connect();
    try {
      await holder.query("SELECT pg_advisory_lock($1::int, hashtext($2))", [0x454f53, NAME]);
      const skipped = await fetchAs(join(world.dir, "images-c"), short);
      assert.equal(skipped.code, 0, skipped.stderr);
      assert.match(skipped.stdout.toString(), new RegExp(`${NAME}: skipped: another fetch is publishing`));
      assert.match(skipped.stderr, /"fetch skipped: another fetch is publishing"/);
    } finally {
      await holder.end();
    }
  });

  test("devices on both replicas go through a two-wave rollout; a pause through one holds the other", async (t) => {
    if (!pgc) return t.skip(`PostgreSQL cannot start here: ${unavailable}`);
    const [r1, r2] = replicas as [Replica, Replica];
    // Alternating: in each wave one device asks replica 1 first, the other replica 2; each names the other as a mirror.
    const all = [first[0], first[1], second[0], second[1]] as string[];
    const onReplica1 = new Set([first[0], victim]);
    for (const id of all) {
      const [primary, mirror] = onReplica1.has(id) ? [r1, r2] : [r2, r1];
      const url = id === victim ? `https://127.0.0.1:${killProxy.port}` : primary.server.url;
      devices.set(
        id,
        await makeDevice(deviceImage, v1, {
          config:
            `update:\n  name: ${NAME}\n  url: ${url}\n  mirrors:\n    - ${mirror.server.url}\n` +
            `  ca: ${tls.cert}\n  tries: 3\n`,
          keys: [join(world.keysDir, "release.pub")],
          token: tokens.get(id) as string,
        }),
      );
    }
    // Each device checks in (through its own replica): the fleet knows them all before the rollout.
    await Promise.all(
      all.map(async (id) => {
        const r = await (devices.get(id) as TestDevice).run(["--check"]);
        assert.equal(r.code, 1, `${id}: 2.0.0 is offered before any rollout\n${r.stderr}`);
      }),
    );
    const created = await admin(r1, "POST", "", {
      image: NAME,
      version: "2.0.0",
      id: ROLLOUT,
      tags: [],
      waves: WAVES,
      soak_seconds: 1,
      error_threshold: 0.1,
      success_threshold: 1,
    });
    assert.equal(created.rollout.previous, "1.0.0");
    // Paused through replica 1 at once: the first wave's devices keep their release, no later wave opens.
    assert.equal(
      (await admin(r1, "POST", `/${ROLLOUT}/pause`, { reason: "replica test" })).rollout.state,
      "paused",
    );

    // Both at once, each through its own replica.
    await Promise.all(
      first.map(async (id) => {
        const d = devices.get(id) as TestDevice;
        const applied = await d.run(["--apply"]);
        assert.equal(applied.code, 0, `${id}: ${applied.stderr}`);
        await d.boot("B", "COMMIT_UPDATE");
        const committed = await d.run(["--commit"]);
        assert.equal(committed.code, 0, `${id}: ${committed.stderr}`);
        assert.equal((await d.grubenv()).get("eos_default"), "B");
      }),
    );
    assert.ok(rootRequests(r1).length > 0 && rootRequests(r2).length > 0, "each replica streamed a root");
    // The first wave has all committed and its soak is over: only the pause, in the database, holds wave 2.
    await new Promise((r) => setTimeout(r, 2500));
    const asked = second[0] as string;
    assert.equal((await show(r2)).rollout.state, "paused");
    assert.equal(await offered(r2, asked), "1.0.0", "replica 2 holds a device of wave 2");
    const check = await (devices.get(asked) as TestDevice).run(["--check"]);
    assert.equal(check.code, 0, `${asked} is offered nothing new through replica 2\n${check.stderr}`);

    assert.equal((await admin(r2, "POST", `/${ROLLOUT}/resume`, {})).rollout.state, "running");
    await until(
      "wave 2 opens",
      () => show(r1),
      (s) => s.rollout.current_wave === 1,
      15_000,
    );
    assert.equal(await offered(r1, asked), "2.0.0");
    const d = devices.get(asked) as TestDevice;
    const applied = await d.run(["--apply"]);
    assert.equal(applied.code, 0, applied.stderr);
    await d.boot("B", "COMMIT_UPDATE");
    assert.equal((await d.run(["--commit"])).code, 0);
  });

  test("replica 1 is killed in the middle of a download: the device resumes on replica 2", async (t) => {
    if (!pgc) return t.skip(`PostgreSQL cannot start here: ${unavailable}`);
    const [r1, r2] = replicas as [Replica, Replica];
    const d = devices.get(victim);
    if (!d) return t.skip("the rollout test did not set the devices up");
    const before2 = rootRequests(r2).length;
    const dead = once(r1.server.child, "exit");
    // Well into the root stream (its manifest and signature are a few KiB): then replica 1 dies.
    killAt = carried + 1 * MiB;
    const applied = await d.run(["--apply", "--no-delta"]);
    await Promise.race([dead, new Promise((r) => setTimeout(r, 5000))]);
    assert.equal(r1.server.child.signalCode, "SIGKILL", "replica 1 was killed");
    assert.equal(applied.code, 0, applied.stderr);
    const cut = /download interrupted at (\d+) of \d+ bytes/.exec(applied.stderr);
    assert.ok(cut, `the download broke off:\n${applied.stderr}`);
    assert.ok(Number(cut[1]) > 0, "after some bytes had landed");
    assert.match(applied.stderr, new RegExp(`continuing with ${r2.server.url.replace(/\./g, "\\.")}`));
    assert.doesNotMatch(applied.stderr, /writing from the beginning/);
    // Replica 2 sent the rest only: a Range from the byte the device had.
    const resumed = rootRequests(r2).slice(before2);
    assert.equal(resumed.length, 1, JSON.stringify(resumed));
    assert.equal(resumed[0]?.status, 206);
    const dataBytes = v2.partitions.root.data_bytes ?? v2.partitions.root.size;
    assert.equal(Number(resumed[0]?.bytes) + Number(cut[1]), dataBytes, "the rest, from where it stopped");
    assert.equal((await d.grubenv()).get("eos_B_sha256"), v2.partitions.root.sha256, "the slot verified");
    await d.boot("B", "COMMIT_UPDATE");
    const committed = await d.run(["--commit"]);
    assert.equal(committed.code, 0, committed.stderr);
    assert.equal((await d.grubenv()).get("eos_default"), "B");
  });
});
