/**
 * What a device's reports are worth to the fleet's operator, against a real
 * `serve`: a drop is counted once, however the queue's lock falls; and a
 * device over its report limit still gets the events that rollouts judge
 * waves on (committed, fell_back, failed…) recorded at once, while its
 * chatty ones (checks, progress) wait for the server's Retry-After. While
 * update.url cannot be reached, reports go to a replica in update.mirrors.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createServer } from "node:net";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { makeDevice } from "../helpers/device.ts";
import { REPO, run } from "../helpers/run.ts";
import {
  httpsCall,
  makeFleetWorld,
  startFleetServer,
  stopServer,
  type FleetWorld,
} from "../helpers/fleet-server.ts";

const NAME = "EOS.x86_64-AB";
let fw: FleetWorld;

/** The device as the admin API shows it (its row and events). */
async function showDevice(
  fleet: Awaited<ReturnType<typeof startFleetServer>>,
  query: string,
): Promise<Shown> {
  const r = await httpsCall(fleet.server.url, fw.tls, "GET", `/v1/admin/devices/${query}`, {
    token: fleet.env.EOS_ADMIN_TOKEN as string,
  });
  assert.equal(r.status, 200, r.text);
  return JSON.parse(r.text) as Shown;
}

before(async () => {
  fw = await makeFleetWorld(NAME, 1024 * 1024);
});

after(async () => {
  await fw.close();
});

const checked = (id: string) => ({
  type: "checked",
  id,
  time: new Date().toISOString(),
  version: "1.0.0",
  slot: "A",
  sha256: "0".repeat(64),
  available: true,
});

interface Shown {
  device: { dropped: number; state: string };
  events: Array<{ type: string; data: { id: string } }>;
}

test("a drop is reported once, and a delivered event never counted as dropped, when the queue stays locked after a send", async () => {
  const fleet = await startFleetServer({
    world: fw.world,
    dir: join(fw.world.dir, "drops"),
    extraConfig: "",
    deviceIds: ["dev-d"],
    tls: fw.tls,
  });
  const device = await makeDevice(fw.deviceImage, fw.v1, {
    config: `update:\n  name: ${NAME}\n  url: ${fleet.server.url}\n  ca: ${fw.tls.cert}\n`,
    keys: [join(fw.world.keysDir, "release.pub")],
    token: fleet.tokens.get("dev-d") as string,
  });
  const queue = join(device.root, "run/eos/reports.json");
  const show = () => showDevice(fleet, "dev-d?limit=1000");
  // A full queue from a time the server was unreachable, which had to drop 3 events.
  const queued = Array.from({ length: 64 }, (_, i) => checked(`queued-${String(i).padStart(4, "0")}`));
  await mkdir(dirname(queue), { recursive: true });
  await writeFile(queue, JSON.stringify({ id: "queue-drops", events: queued, drops: 3, lostSeen: 0 }));
  // Another live process takes the queue's lock just as the send is done, and keeps it.
  const holder = spawn("sleep", ["600"], { stdio: "ignore" });
  try {
    await writeFile(`${queue}.lock`, `${holder.pid}\n`);
    assert.ok((await device.run(["--check"])).code <= 1);
    const first = await show();
    assert.equal(first.device.dropped, 3, "the queue's drops reached the server");
    const ids = new Set(first.events.map((e) => e.data.id));
    assert.ok(
      queued.every((e) => ids.has(e.id)),
      "the queued events too",
    );

    // A second run while the lock is still held: the drops it was told of are not told again.
    assert.ok((await device.run(["--check"])).code <= 1);
    assert.equal((await show()).device.dropped, 3, "the 3 drops are counted once");

    // The lock free again: the next run's write does not push delivered events out of a "full" queue.
    holder.kill();
    await rm(`${queue}.lock`, { force: true });
    assert.ok((await device.run(["--check"])).code <= 1);
    const last = await show();
    assert.equal(last.device.dropped, 3, "no delivered event counted as dropped");
    assert.equal(last.events.filter((e) => e.type === "checked").length, 64 + 3, "every check stored once");
    const q = JSON.parse(await readFile(queue, "utf8")) as { events: unknown[]; id: string; drops: number };
    assert.deepEqual(
      [q.events.length, q.id, q.drops],
      [0, "queue-drops", 3],
      "nothing left to send; the total kept",
    );
    assert.deepEqual(await readdir(`${queue}.sent`).catch(() => []), [], "the receipts taken in");
  } finally {
    holder.kill();
    await device.close();
    await stopServer(fleet.server);
  }
});

test("two processes that send the same queue at the same moment report its drops once", async () => {
  const fleet = await startFleetServer({
    world: fw.world,
    dir: join(fw.world.dir, "twice"),
    extraConfig: "",
    deviceIds: ["dev-t"],
    tls: fw.tls,
  });
  const device = await makeDevice(fw.deviceImage, fw.v1, {
    config: `update:\n  name: ${NAME}\n  url: ${fleet.server.url}\n  ca: ${fw.tls.cert}\n`,
    keys: [join(fw.world.keysDir, "release.pub")],
    token: fleet.tokens.get("dev-t") as string,
  });
  const queue = join(device.root, "run/eos/reports.json");
  try {
    // A queue that had to drop 3 events while the server was unreachable.
    await writeFile(
      queue,
      JSON.stringify({
        id: "queue-twice",
        events: [checked("twice-0001"), checked("twice-0002")],
        drops: 3,
        lostSeen: 0,
      }),
    );
    const flusher = (who: string) =>
      run(
        process.execPath,
        ["--import", "tsx", join(REPO, "test/helpers/queue-flusher.ts"), device.root, who],
        {
          cwd: REPO,
        },
      );
    const flushers = [flusher("a"), flusher("b")];
    const deadline = Date.now() + 60_000;
    for (const who of ["a", "b"])
      while (!(await stat(join(device.root, `ready-${who}`)).catch(() => undefined))) {
        assert.ok(Date.now() < deadline, "the flushers did not start");
        await new Promise((r) => setTimeout(r, 20));
      }
    await writeFile(join(device.root, "go"), "");
    for (const r of await Promise.all(flushers)) assert.equal(r.code, 0, r.stderr);
    const shown = await showDevice(fleet, "dev-t");
    assert.equal(shown.events.length, 2, "both events stored, once each");
    assert.equal(shown.device.dropped, 3, "the 3 drops counted once, not once per process");
  } finally {
    await device.close();
    await stopServer(fleet.server);
  }
});

test("a device over its report limit still gets its commit recorded at once; its checks wait, and a flood of progress gets 429", async () => {
  const fleet = await startFleetServer({
    world: fw.world,
    dir: join(fw.world.dir, "limit"),
    extraConfig:
      "serve:\n  report_limit:\n    per_device: { burst: 2, per_minute: 1 }\n    state_events: { burst: 3, per_minute: 1 }\n",
    deviceIds: ["dev-l"],
    tls: fw.tls,
  });
  const token = fleet.tokens.get("dev-l") as string;
  const device = await makeDevice(fw.deviceImage, fw.v1, {
    config: `update:\n  name: ${NAME}\n  url: ${fleet.server.url}\n  ca: ${fw.tls.cert}\n  tries: 3\n`,
    keys: [join(fw.world.keysDir, "release.pub")],
    token,
  });
  const queue = join(device.root, "run/eos/reports.json");
  const show = () => showDevice(fleet, "dev-l");
  const post = (events: unknown[], headers: Record<string, string> = {}) =>
    httpsCall(fleet.server.url, fw.tls, "POST", "/v1/events", {
      token,
      headers,
      body: { device: { image: NAME, architecture: "x86_64" }, events },
    });
  try {
    // Two checks spend the bucket; the third is refused and kept, with the time to try again.
    for (let i = 0; i < 3; i++) assert.equal((await device.run(["--check"])).code, 1);
    const held = JSON.parse(await readFile(queue, "utf8")) as { retryAt: number };
    assert.ok(held.retryAt > Date.now() + 30_000, "the server's Retry-After is kept");

    const applied = await device.run(["--apply"]);
    assert.equal(applied.code, 0, applied.stderr);
    await device.boot("B", "COMMIT_UPDATE");
    const committed = await device.run(["--commit"]);
    assert.equal(committed.code, 0, committed.stderr);

    const shown = await show();
    assert.equal(shown.device.state, "committed", "the commit reached the server at once");
    const types = shown.events.map((e) => e.type);
    for (const type of ["written", "kexec", "committed"]) assert.ok(types.includes(type), `${type} recorded`);
    assert.equal(types.filter((t) => t === "checked").length, 2, "the refused check still waits");
    const waiting = JSON.parse(await readFile(queue, "utf8")) as { events: Array<{ type: string }> };
    assert.deepEqual(
      [...new Set(waiting.events.map((e) => e.type))].sort(),
      ["checked", "download_started"],
      "the chatty events are kept for after the wait",
    );

    // A flood of progress is refused, with or without the state header, before anything is stored.
    const progress = (i: number) => ({
      type: "download_progress",
      id: `progress-${String(i).padStart(4, "0")}`,
      time: new Date().toISOString(),
      version: "2.0.0",
      bytes: i,
      total: 100,
    });
    for (let i = 0; i < 5; i++) {
      const r = await post([progress(i)], i % 2 ? { "x-eos-events": "state" } : {});
      assert.equal(r.status, 429, r.text);
      assert.match(String(r.headers["retry-after"]), /^\d+$/);
    }
    // State events beyond the limit have a bound of their own: one more batch of the burst of 3, then 429.
    const failed = (i: number) => ({
      type: "failed",
      id: `failed-${String(i).padStart(4, "0")}`,
      time: new Date().toISOString(),
      stage: "check",
      code: "NETWORK",
      message: "a looping device",
    });
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) statuses.push((await post([failed(i)], { "x-eos-events": "state" })).status);
    assert.deepEqual(statuses, [200, 429, 429]);
    const after = await show();
    assert.equal(after.events.filter((e) => e.type === "download_progress").length, 0, "no progress stored");
  } finally {
    await device.close();
    await stopServer(fleet.server);
  }
});

test("while update.url cannot be reached, the device's reports reach the mirror's control plane", async () => {
  const fleet = await startFleetServer({
    world: fw.world,
    dir: join(fw.world.dir, "mirror"),
    extraConfig: "",
    deviceIds: ["dev-m"],
    tls: fw.tls,
  });
  // A port nothing listens on: update.url's server is down (connection refused).
  const closed = createServer().listen(0, "127.0.0.1");
  await once(closed, "listening");
  const { port } = closed.address() as { port: number };
  closed.close();
  const device = await makeDevice(fw.deviceImage, fw.v1, {
    config:
      `update:\n  name: ${NAME}\n  url: https://127.0.0.1:${port}\n` +
      `  mirrors:\n    - ${fleet.server.url}\n  ca: ${fw.tls.cert}\n`,
    keys: [join(fw.world.keysDir, "release.pub")],
    token: fleet.tokens.get("dev-m") as string,
  });
  const queue = join(device.root, "run/eos/reports.json");
  try {
    const checkedRun = await device.run(["--check"]);
    assert.ok(checkedRun.code <= 1, checkedRun.stderr);
    const shown = await showDevice(fleet, "dev-m");
    assert.deepEqual(
      shown.events.map((e) => e.type),
      ["checked"],
      "the check's report arrived on the mirror",
    );
    const q = JSON.parse(await readFile(queue, "utf8")) as { events: unknown[] };
    assert.equal(q.events.length, 0, "nothing left queued for update.url");
  } finally {
    await device.close();
    await stopServer(fleet.server);
  }
});
