/**
 * A device downloads any time but applies only inside its window: a real
 * os-update --apply against the real server while the device's group window
 * is closed writes and verifies slot B, records it as staged in the boot
 * control block and exits 4; once the window is open (the device leaves the
 * group) the next --apply hashes the staged slot again and switches to it
 * without downloading a byte of the root, as the server's own counters show.
 * A staged slot damaged in between is downloaded again, never trusted.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { readGpt, requirePartition, partitionRange } from "../../src/core/gpt.ts";
import { openBlockSource } from "../../src/io/files.ts";
import { runEos } from "../helpers/run.ts";
import {
  closedWindow,
  httpsCall,
  makeFleetWorld,
  startFleetServer,
  stopServer,
  type FleetServer,
  type FleetWorld,
} from "../helpers/fleet-server.ts";
import { makeDevice, type TestDevice } from "../helpers/device.ts";

const NAME = "EOS.x86_64-AB";
/** The night group's window, closed for the whole test (computed once: the minute moves on). */
const CLOSED = closedWindow();

let fw: FleetWorld;
let fleet: FleetServer;
const devices = new Map<string, TestDevice>();

before(async () => {
  fw = await makeFleetWorld(NAME, 1024 * 1024);
  fleet = await startFleetServer({
    world: fw.world,
    dir: join(fw.world.dir, "staged"),
    extraConfig: `serve:\n  windows:\n    - tags: [night]\n      window: "${CLOSED}"\n`,
    deviceIds: ["calm", "damaged"],
    tls: fw.tls,
  });
  for (const id of ["calm", "damaged"])
    devices.set(
      id,
      await makeDevice(fw.deviceImage, fw.v1, {
        config: `update:\n  name: ${NAME}\n  url: ${fleet.server.url}\n  ca: ${fw.tls.cert}\n  tries: 3\n`,
        keys: [join(fw.world.keysDir, "release.pub")],
        token: fleet.tokens.get(id) as string,
      }),
    );
});

after(async () => {
  if (fleet) await stopServer(fleet.server);
  for (const d of devices.values()) await d.close();
  await fw?.close();
});

const tag = async (id: string, ...tags: string[]) => {
  const r = await runEos("os-update-server", ["devices", "tag", id, ...tags, "--ca", fw.tls.cert], {
    env: { ...fleet.env },
  });
  assert.equal(r.code, 0, r.stderr);
};

/** Root bytes the server has sent so far, full stream and deltas (its /metrics counters). */
async function rootBytesServed(): Promise<number> {
  const r = await httpsCall(fleet.server.url, fw.tls, "GET", "/metrics", {
    token: fleet.env.VIEWER as string,
  });
  assert.equal(r.status, 200, r.text);
  let total = 0;
  for (const m of r.text.matchAll(
    /^eos_http_response_bytes_total\{route="\/v1\/images\/:name\/(?:root|deltas\/:from)"\} (\d+)$/gm,
  ))
    total += Number(m[1]);
  return total;
}

/** Flips one byte of slot B through the same loop device os-update reads. */
async function damageSlotB(d: TestDevice): Promise<void> {
  const source = await openBlockSource(d.loop);
  const { table } = await readGpt(source);
  await source.close();
  const range = partitionRange(table, requirePartition(table, "p.lxrootclone1"));
  const handle = await open(d.loop, "r+");
  try {
    const at = range.offset + 4096;
    const byte = Buffer.alloc(1);
    await handle.read(byte, 0, 1, at);
    byte[0] = (byte[0] as number) ^ 0xff;
    await handle.write(byte, 0, 1, at);
    await handle.datasync();
  } finally {
    await handle.close();
  }
}

/** Outside the window: written, verified, recorded as staged; no trial, no switch; exit 4. */
async function stage(d: TestDevice, id: string): Promise<void> {
  assert.equal((await d.run(["--check"])).code, 1, "first contact registers the device");
  await tag(id, "night");
  const applied = await d.run(["--apply"]);
  assert.equal(applied.code, 4, applied.stderr);
  assert.match(
    applied.stderr,
    /\[WINDOW\]: 2\.0\.0 is written and verified in slot B, .* stays staged there/,
  );
  const vars = await d.grubenv();
  assert.deepEqual(
    ["eos_default", "eos_trial", "eos_tries", "eos_pending", "eos_staged"].map((k) => vars.get(k) ?? ""),
    ["A", "", "0", "", "B"],
    "boot state unchanged apart from the slot record",
  );
  assert.deepEqual(
    [vars.get("eos_B_version"), vars.get("eos_B_sha256"), vars.get("eos_B_size")],
    [fw.v2.version, fw.v2.partitions.root.sha256, String(fw.v2.partitions.root.size)],
  );
  assert.deepEqual(d.calls, [], "no kexec, no reboot");
}

describe("an update staged outside the maintenance window", () => {
  test("is switched to inside the window without downloading the root again", async () => {
    const d = devices.get("calm") as TestDevice;
    const before0 = await rootBytesServed();
    await stage(d, "calm");
    const staged = await rootBytesServed();
    assert.ok(
      staged > before0,
      `the root was downloaded while the window was closed (${before0} → ${staged})`,
    );

    // Still closed: a second --apply re-verifies and stops again, downloading nothing.
    assert.equal((await d.run(["--apply"])).code, 4);
    assert.equal(await rootBytesServed(), staged, "nothing downloaded again while closed");

    await tag("calm"); // out of the group: no window, any time is fine
    const applied = await d.run(["--apply"]);
    assert.equal(applied.code, 0, applied.stderr);
    assert.match(applied.stdout, /slot B already holds 2\.0\.0, verified again .*: not downloading it again/);
    assert.equal(await rootBytesServed(), staged, "no root bytes downloaded for the switch");
    const vars = await d.grubenv();
    assert.deepEqual(
      [vars.get("eos_trial"), vars.get("eos_pending"), vars.get("eos_staged") ?? ""],
      ["B", "B", ""],
    );
    assert.deepEqual(
      d.calls.map((c) => c.action),
      ["kexecLoad", "kexecExec"],
    );
  });

  test("is downloaded again when it was damaged in between, and --rollback refuses it", async () => {
    const d = devices.get("damaged") as TestDevice;
    await stage(d, "damaged");
    const rolled = await d.run(["--rollback"]);
    assert.notEqual(rolled.code, 0);
    assert.match(rolled.stderr, /staged for the maintenance window, never booted: nothing to roll back to/);
    await damageSlotB(d);
    const staged = await rootBytesServed();

    await tag("damaged");
    const applied = await d.run(["--apply"]);
    assert.equal(applied.code, 0, applied.stderr);
    assert.match(
      applied.stdout,
      /slot B was staged with 2\.0\.0 but no longer verifies .*: downloading it again/,
    );
    assert.ok((await rootBytesServed()) > staged, "the damaged slot was written again from the server");
    assert.equal((await d.grubenv()).get("eos_trial"), "B");
  });
});

describe("the maintenance windows admin API", () => {
  const call = (method: string, o: { token?: string; body?: unknown } = {}) =>
    httpsCall(fleet.server.url, fw.tls, method, "/v1/admin/windows", o);
  const operator = () => fleet.env.EOS_ADMIN_TOKEN as string;
  const windowOf = async (d: TestDevice) => JSON.parse((await d.run(["--check", "--json"])).stdout).window;

  test("GET shows the config's; PUT replaces them (validated, operator only) and devices get them; DELETE goes back", async () => {
    const d = devices.get("damaged") as TestDevice;
    assert.equal((await call("GET")).status, 401);
    const shown = await call("GET", { token: fleet.env.VIEWER as string });
    assert.equal(shown.status, 200, shown.text);
    assert.deepEqual(JSON.parse(shown.text), {
      windows: [{ tags: ["night"], window: CLOSED }],
      source: "config",
    });

    const wanted = [{ tags: [], window: "Mon-Sun 00:00-24:00" }];
    const viewer = await call("PUT", { token: fleet.env.VIEWER as string, body: { windows: wanted } });
    assert.equal(viewer.status, 403, viewer.text);
    const bad = await call("PUT", { token: operator(), body: { windows: [{ window: "Mon 25:00-26:00" }] } });
    assert.equal(bad.status, 400, bad.text);
    assert.match(JSON.parse(bad.text).error, /windows\[0\]\.window: .*"25:00" is not a time/);
    const badTag = await call("PUT", {
      token: operator(),
      body: { windows: [{ tags: ["a b"], window: "01:00-02:00" }] },
    });
    assert.equal(badTag.status, 400, badTag.text);
    assert.equal(await windowOf(d), null, "no group matches an untagged device yet");

    const put = await call("PUT", { token: operator(), body: { windows: wanted } });
    assert.equal(put.status, 200, put.text);
    const set = JSON.parse(put.text) as { windows: unknown; source: string; updated_by: string };
    assert.deepEqual([set.windows, set.source, set.updated_by], [wanted, "api", "ops"]);
    assert.deepEqual(await windowOf(d), {
      spec: "Mon-Sun 00:00-24:00",
      timezone: "UTC",
      open: true,
      opens: null,
    });

    const reset = await call("DELETE", { token: operator() });
    assert.equal(reset.status, 200, reset.text);
    assert.equal(JSON.parse(reset.text).source, "config");
    assert.equal(await windowOf(d), null);
  });
});

test("the windows admin API stores and replaces them on PostgreSQL too", async (t) => {
  if (!fw.pg) return t.skip(`PostgreSQL cannot start here: ${fw.pgUnavailable}`);
  const pg = await startFleetServer({
    world: fw.world,
    dir: join(fw.world.dir, "staged-pg"),
    extraConfig: `database: ${await fw.pg.freshDatabase()}\n`,
    deviceIds: ["pg-1"],
    tls: fw.tls,
  });
  try {
    const call = (method: string, body?: unknown) =>
      httpsCall(pg.server.url, fw.tls, method, "/v1/admin/windows", {
        token: pg.env.EOS_ADMIN_TOKEN as string,
        ...(body === undefined ? {} : { body }),
      });
    assert.deepEqual(JSON.parse((await call("GET")).text), { windows: [], source: "config" });
    for (const window of ["01:00-02:00", "Sat,Sun 00:00-24:00"]) {
      const put = await call("PUT", { windows: [{ tags: ["lab"], window }] });
      assert.equal(put.status, 200, put.text);
    }
    const shown = JSON.parse((await call("GET")).text) as { windows: unknown; source: string };
    assert.deepEqual(
      shown.windows,
      [{ tags: ["lab"], window: "Sat,Sun 00:00-24:00" }],
      "the second PUT replaced the first",
    );
    assert.equal(shown.source, "api");
    assert.equal(JSON.parse((await call("DELETE")).text).source, "config");
  } finally {
    await stopServer(pg.server);
  }
});
