/**
 * What a device's reports are worth to the fleet's operator, against a real
 * `serve`: a drop is counted once, however the queue's lock falls; and a
 * device over its report limit still gets the events that rollouts judge
 * waves on (committed, fell_back, failed…) recorded at once, while its
 * chatty ones (checks, progress) wait for the server's Retry-After.
 */
import { spawn } from "node:child_process";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { makeDevice } from "../helpers/device.ts";
import {
  httpsCall,
  makeFleetWorld,
  startFleetServer,
  stopServer,
  type FleetWorld,
} from "../helpers/fleet-server.ts";

const NAME = "EOS.x86_64-AB";
let fw: FleetWorld;

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
  const show = async () => {
    const r = await httpsCall(fleet.server.url, fw.tls, "GET", "/v1/admin/devices/dev-d?limit=1000", {
      token: fleet.env.EOS_ADMIN_TOKEN as string,
    });
    assert.equal(r.status, 200, r.text);
    return JSON.parse(r.text) as Shown;
  };
  // A full queue from a time the server was unreachable, which had to drop 3 events.
  const queued = Array.from({ length: 64 }, (_, i) => checked(`queued-${String(i).padStart(4, "0")}`));
  await mkdir(dirname(queue), { recursive: true });
  await writeFile(queue, JSON.stringify({ events: queued, dropped: 3, lostSeen: 0 }));
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
    const q = JSON.parse(await readFile(queue, "utf8")) as { events: unknown[]; dropped: number };
    assert.deepEqual([q.events.length, q.dropped], [0, 0], "nothing left to send");
    assert.deepEqual(await readdir(`${queue}.sent`).catch(() => []), [], "the receipts taken in");
  } finally {
    holder.kill();
    await device.close();
    await stopServer(fleet.server);
  }
});
