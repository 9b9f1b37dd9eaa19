/**
 * The control plane end to end, on SQLite and on a real PostgreSQL: devices
 * (real os-update runs on their own disks, offline --root-device style as in
 * os-update.test.ts) report to the real server; the inventory, filters,
 * roles and history are read through the CLI and the API; the server is
 * restarted and keeps its state; a device that commits while the server is
 * down reports it with its next run.
 */
import { spawn } from "node:child_process";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { streamBytes } from "../../src/core/manifest.ts";
import { SPILL_MAX } from "../../src/core/fleet/report-queue.ts";
import { request as httpsRequest } from "node:https";
import { runEos } from "../helpers/run.ts";
import { startServer, type RunningServer, type TestCert } from "../helpers/serve.ts";
import type { World } from "../helpers/server-world.ts";
import {
  httpsCall,
  makeFleetWorld,
  startFleetServer,
  stopServer,
  type FleetWorld,
} from "../helpers/fleet-server.ts";
import { makeDevice, type TestDevice } from "../helpers/device.ts";
import type { Postgres } from "../helpers/postgres.ts";

const NAME = "EOS.x86_64-AB";

interface Manifest {
  version: string;
  partitions: { root: { sha256: string; size: number } };
}

let world: World;
let v1Manifest: Manifest;
/** What a full download of v2 moves: its root up to where the data ends (the device writes the zeros). */
let v2StreamBytes: number;
let tls: TestCert;
let pg: Postgres | undefined;
let pgUnavailable = "";

let fw: FleetWorld;

before(async () => {
  fw = await makeFleetWorld(NAME, 2 * 1024 * 1024);
  ({ world, tls, pg, pgUnavailable } = fw);
  v1Manifest = fw.v1;
  v2StreamBytes = streamBytes(fw.v2.partitions.root);
});

after(async () => {
  await fw.close();
});

for (const kind of ["sqlite", "postgres"] as const) {
  describe(`fleet reports on ${kind}`, () => {
    let dir: string;
    let config: string;
    let tokensDir: string;
    const devices: TestDevice[] = [];
    const tokens = new Map<string, string>();
    let server: RunningServer;
    let env: NodeJS.ProcessEnv;

    before(async () => {
      if (kind === "postgres" && !pg) return;
      dir = join(world.dir, kind);
      const database = kind === "postgres" && pg ? `database: ${await pg.freshDatabase()}\n` : "";
      const fleet = await startFleetServer({
        world,
        dir,
        extraConfig: database,
        deviceIds: ["dev-1", "dev-2", "dev-3"],
        tls,
      });
      ({ config, tokensDir, env, server } = fleet);
      for (const [id, token] of fleet.tokens) tokens.set(id, token);
    });

    after(async () => {
      if (server) await stopServer(server);
      for (const d of devices) await d.close();
    });

    const deviceConfig = () =>
      `update:\n  name: ${NAME}\n  url: ${server.url}\n  ca: ${tls.cert}\n  tries: 3\n`;
    const cli = (args: string[], extra: NodeJS.ProcessEnv = {}) =>
      runEos("os-update-server", [...args, "--ca", tls.cert], { env: { ...env, ...extra } });
    const api = async (
      method: string,
      path: string,
      token: string,
      body?: string,
      type = "application/json",
    ) => {
      const ca = await readFile(tls.cert);
      return new Promise<{ status: number; body: Record<string, unknown> }>((resolve, reject) => {
        const headers: Record<string, string> = { authorization: `Bearer ${token}` };
        if (body !== undefined) headers["content-type"] = type;
        const req = httpsRequest(`${server.url}${path}`, { method, ca, headers }, (res) => {
          let text = "";
          res.setEncoding("utf8").on("data", (s: string) => (text += s));
          res.on("end", () =>
            resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown> }),
          );
        });
        req.on("error", reject);
        req.end(body);
      });
    };

    test("devices report check, apply, kexec and commit; the inventory and history show it", async (t) => {
      if (!server) return t.skip(`PostgreSQL cannot start here: ${pgUnavailable}`);
      for (const id of ["dev-1", "dev-2", "dev-3"]) {
        devices.push(
          await makeDevice(join(world.dir, "device-v1.raw"), v1Manifest, {
            config: deviceConfig(),
            keys: [join(world.keysDir, "release.pub")],
            token: tokens.get(id) as string,
          }),
        );
      }
      const [d1, d2, d3] = devices as [TestDevice, TestDevice, TestDevice];
      assert.equal((await d1.run(["--check"])).code, 1);
      assert.equal((await d2.run(["--check"])).code, 1);
      const applied = await d1.run(["--apply"]);
      assert.equal(applied.code, 0, applied.stderr);
      await d1.boot("B", "COMMIT_UPDATE");
      assert.equal((await d1.run(["--commit"])).code, 0);
      assert.equal((await d3.run(["--apply"])).code, 0);

      const list = await cli(["devices", "list", "--json"]);
      assert.equal(list.code, 0, list.stderr);
      const byId = new Map(
        (JSON.parse(list.stdout.toString()) as { devices: Array<Record<string, unknown>> }).devices.map(
          (d) => [d.id, d],
        ),
      );
      assert.deepEqual([...byId.keys()], ["dev-1", "dev-2", "dev-3"]);
      assert.deepEqual(
        [byId.get("dev-1")?.state, byId.get("dev-1")?.running_version, byId.get("dev-1")?.running_slot],
        ["committed", "2.0.0", "B"],
      );
      assert.equal(byId.get("dev-1")?.other_version, "1.0.0");
      assert.equal(byId.get("dev-2")?.state, "update-available");
      assert.equal(byId.get("dev-3")?.state, "rebooting");
      assert.equal(byId.get("dev-3")?.other_version, "2.0.0");
      assert.equal(byId.get("dev-1")?.image, NAME);
      assert.equal(byId.get("dev-1")?.registry, "none");

      const show = await cli(["devices", "show", "dev-1", "--json"]);
      const history = (JSON.parse(show.stdout.toString()) as { events: Array<{ type: string }> }).events;
      assert.deepEqual(
        history.map((e) => e.type),
        ["checked", "download_started", "written", "kexec", "committed"],
      );
      const text = await cli(["devices", "show", "dev-1"]);
      assert.match(text.stdout.toString(), /running: +2\.0\.0 \(slot B\)/);
      assert.match(text.stdout.toString(), /committed +version=2\.0\.0 slot=B/);
    });

    test("roles, filters and refusals: viewers read, operators tag; bad input is a 4xx naming the field", async (t) => {
      if (!server) return t.skip(`PostgreSQL cannot start here: ${pgUnavailable}`);
      const denied = await cli(["devices", "tag", "dev-1", "canary"], { EOS_ADMIN_TOKEN: env.VIEWER });
      assert.equal(denied.code, 3);
      assert.match(denied.stderr, /\[AUTH\].*needs the operator role; admin token watcher has viewer/);
      assert.equal((await cli(["devices", "tag", "dev-1", "canary", "lab"])).code, 0);
      const ids = async (...args: string[]) =>
        (
          JSON.parse((await cli(["devices", "list", "--json", ...args])).stdout.toString()) as {
            devices: Array<{ id: string }>;
          }
        ).devices.map((d) => d.id);
      assert.deepEqual(await ids("--tag", "canary"), ["dev-1"]);
      assert.deepEqual(await ids("--version", "1.0.0"), ["dev-2", "dev-3"]);
      assert.deepEqual(await ids("--state", "committed"), ["dev-1"]);
      const table = await cli(["devices", "list", "--tag", "lab"], { EOS_ADMIN_TOKEN: env.VIEWER });
      assert.match(table.stdout.toString(), /^DEVICE +IMAGE +VERSION/);
      assert.match(
        table.stdout.toString(),
        /dev-1 +EOS\.x86_64-AB +2\.0\.0 +B +1\.0\.0 +committed .* canary,lab/,
      );
      const badState = await cli(["devices", "list", "--state", "happy"]);
      assert.equal(badState.code, 2);
      assert.match(badState.stderr, /state: one of/);

      const token = tokens.get("dev-2") as string;
      const device = { image: NAME, architecture: "x86_64" };
      const event = {
        id: "test-0001",
        time: new Date().toISOString(),
        type: "kexec",
        version: "2.0.0",
        slot: "C",
      };
      const bad = await api("POST", "/v1/events", token, JSON.stringify({ device, events: [event] }));
      assert.equal(bad.status, 400);
      assert.match(String(bad.body.error), /^events\[0\]\.slot: /);
      assert.equal(bad.body.code, "USAGE");
      const big = await api(
        "POST",
        "/v1/events",
        token,
        JSON.stringify({ device, events: [event], pad: "x".repeat(200_000) }),
      );
      assert.equal(big.status, 413);
      assert.equal((await api("POST", "/v1/events", token, "{}", "text/plain")).status, 415);
      assert.equal((await api("POST", "/v1/events", "not-a-valid-token-at-all", "{}")).status, 401);
      assert.equal(
        (await api("GET", "/v1/admin/devices", token)).status,
        401,
        "a device token is no admin token",
      );
    });

    test("restarted, the server keeps its state; a device that committed while it was down reports later", async (t) => {
      if (!server) return t.skip(`PostgreSQL cannot start here: ${pgUnavailable}`);
      const d3 = devices[2] as TestDevice;
      await stopServer(server);
      await d3.boot("B", "COMMIT_UPDATE");
      const commit = await d3.run(["--commit"]);
      assert.equal(commit.code, 0, `committing needs no server: ${commit.stderr}`);
      const queued = JSON.parse(await readFile(join(d3.root, "run/eos/reports.json"), "utf8")) as {
        events: Array<{ type: string }>;
      };
      assert.deepEqual(
        queued.events.map((e) => e.type),
        ["committed"],
      );
      server = await startServer({
        config,
        tokensDir,
        tls,
        extraArgs: ["--port", new URL(env.EOS_SERVER_URL as string).port],
      });
      const before = await cli(["devices", "show", "dev-3", "--json"]);
      assert.equal(JSON.parse(before.stdout.toString()).device.state, "rebooting", "kept across the restart");
      assert.equal((await d3.run(["--check"])).code, 0);
      const after = JSON.parse((await cli(["devices", "show", "dev-3", "--json"])).stdout.toString()) as {
        device: { state: string; running_version: string };
        events: Array<{ type: string }>;
      };
      assert.deepEqual(after.events.map((e) => e.type).slice(-2), ["committed", "checked"]);
      assert.deepEqual([after.device.state, after.device.running_version], ["current", "2.0.0"]);
      assert.equal(
        JSON.parse(await readFile(join(d3.root, "run/eos/reports.json"), "utf8")).events.length,
        0,
      );
      const d1 = JSON.parse((await cli(["devices", "show", "dev-1", "--json"])).stdout.toString()) as {
        device: { state: string; tags: string[] };
      };
      assert.deepEqual([d1.device.state, d1.device.tags], ["committed", ["canary", "lab"]]);
    });

    test("a download reports its progress (bytes and total) between download_started and written", async (t) => {
      if (!server) return t.skip(`PostgreSQL cannot start here: ${pgUnavailable}`);
      const d2 = devices[1] as TestDevice;
      // Every chunk may report (the 10 s default leaves a fast test none): the cadence is the only change.
      const applied = await d2.run(["--apply"], { progressReportMs: 0 });
      assert.equal(applied.code, 0, applied.stderr);
      const shown = JSON.parse((await cli(["devices", "show", "dev-2", "--json"])).stdout.toString()) as {
        events: Array<{ type: string; data: { bytes?: number; total?: number; version?: string } }>;
      };
      const types = shown.events.map((e) => e.type);
      const progress = shown.events.filter((e) => e.type === "download_progress");
      assert.ok(progress.length >= 1, `progress reported: ${types.join(" ")}`);
      const first = types.indexOf("download_progress");
      const last = types.lastIndexOf("download_progress");
      assert.ok(
        types.indexOf("download_started") < first && last < types.indexOf("written"),
        types.join(" "),
      );
      const total = v2StreamBytes;
      let previous = 0;
      for (const e of progress) {
        assert.deepEqual([e.data.version, e.data.total], ["2.0.0", total]);
        assert.ok((e.data.bytes ?? -1) >= previous && (e.data.bytes ?? 0) <= total, JSON.stringify(e.data));
        previous = e.data.bytes ?? 0;
      }
    });

    test("an event that cannot get the queue's lock in time is kept beside it and sent; past the spill it is counted as dropped, and the server told", async (t) => {
      if (!server) return t.skip(`PostgreSQL cannot start here: ${pgUnavailable}`);
      const d2 = devices[1] as TestDevice;
      const queue = join(d2.root, "run/eos/reports.json");
      type Shown = { device: { dropped: number }; events: Array<{ type: string; data: { id: string } }> };
      const show = async () =>
        JSON.parse((await cli(["devices", "show", "dev-2", "--json"])).stdout.toString()) as Shown;
      const before = await show();
      // Another live process holds the queue's lock for the whole test (os-update runs in this one).
      const holder = spawn("sleep", ["600"], { stdio: "ignore" });
      await mkdir(dirname(queue), { recursive: true });
      await writeFile(`${queue}.lock`, `${holder.pid}\n`);
      try {
        const checked = await d2.run(["--check"]);
        assert.ok(checked.code === 0 || checked.code === 1, checked.stderr);
        const first = await show();
        const seen = new Set(before.events.map((e) => e.data.id));
        assert.deepEqual(
          first.events.filter((e) => !seen.has(e.data.id)).map((e) => e.type),
          ["checked"],
          "the check's report reached the server though the queue stayed locked",
        );
        assert.equal(first.device.dropped, before.device.dropped);
        assert.deepEqual(await readdir(`${queue}.spill`).catch(() => []), [], "sent, so no longer kept");

        // The spill full (earlier runs' events that could not get the lock either): the next one is counted.
        const spilled = Array.from({ length: SPILL_MAX }, (_, i) => ({
          type: "checked",
          id: `spilled-${String(i).padStart(4, "0")}-${kind}`,
          time: new Date().toISOString(),
          version: "1.0.0",
          slot: "A",
          sha256: "0".repeat(64),
          available: true,
        }));
        await mkdir(`${queue}.spill`, { recursive: true });
        for (const [i, e] of spilled.entries())
          await writeFile(
            join(`${queue}.spill`, `${String(i).padStart(4, "0")}-${e.id}.json`),
            JSON.stringify(e),
          );
        assert.ok((await d2.run(["--check"])).code <= 1);
        const second = await show();
        const ids = new Set(second.events.map((e) => e.data.id));
        assert.ok(
          spilled.every((e) => ids.has(e.id)),
          "every spilled event reached the server",
        );
        assert.equal(second.device.dropped, before.device.dropped + 1, "the check that found the spill full");
      } finally {
        holder.kill();
        await rm(`${queue}.lock`, { force: true });
      }
    });
  });
}

test("over SSH, reporting is off and os-update says so once per boot", async () => {
  const device = await makeDevice(join(world.dir, "device-v1.raw"), v1Manifest, {
    config: `update:\n  name: ${NAME}\n  server: root@127.0.0.1\n  port: 1\n`,
    keys: [join(world.keysDir, "release.pub")],
  });
  try {
    const first = await device.run(["--commit"]);
    assert.match(first.stderr, /reporting to the update server is off over SSH/);
    const second = await device.run(["--commit"]);
    assert.doesNotMatch(second.stderr, /reporting/);
  } finally {
    await device.close();
  }
});

// The limit is kept in the server's memory, not in its database: one database is enough.
test("a device over its report limit gets 429 with Retry-After; it keeps its events and sends nothing before then", async () => {
  const fleet = await startFleetServer({
    world,
    dir: join(world.dir, "report-limit"),
    extraConfig: "serve:\n  report_limit:\n    per_device: { burst: 2, per_minute: 1 }\n",
    deviceIds: ["dev-9"],
    tls,
  });
  const reports: number[] = [];
  let lines = "";
  fleet.server.child.stdout?.on("data", (s: string) => {
    lines += s;
    for (let nl = lines.indexOf("\n"); nl >= 0; nl = lines.indexOf("\n")) {
      const line = lines.slice(0, nl);
      lines = lines.slice(nl + 1);
      const log = JSON.parse(line) as { msg?: string; path?: string; status?: number };
      if (log.msg === "request" && log.path === "/v1/events") reports.push(log.status ?? 0);
    }
  });
  const device = await makeDevice(join(world.dir, "device-v1.raw"), v1Manifest, {
    config: `update:\n  name: ${NAME}\n  url: ${fleet.server.url}\n  ca: ${tls.cert}\n`,
    keys: [join(world.keysDir, "release.pub")],
    token: fleet.tokens.get("dev-9") as string,
  });
  const queue = join(device.root, "run/eos/reports.json");
  const settled = async (n: number) => {
    // The server logs a request once it has answered: the line may trail the device's run a little.
    for (let i = 0; i < 100 && reports.length < n; i++) await new Promise((r) => setTimeout(r, 20));
  };
  try {
    for (let i = 0; i < 3; i++) assert.equal((await device.run(["--check"])).code, 1);
    await settled(3);
    assert.deepEqual(reports, [200, 200, 429]);
    const held = JSON.parse(await readFile(queue, "utf8")) as {
      events: Array<{ type: string }>;
      retryAt: number;
    };
    assert.deepEqual(
      held.events.map((e) => e.type),
      ["checked"],
      "the refused batch is kept",
    );
    const wait = held.retryAt - Date.now();
    assert.ok(wait > 30_000 && wait <= 61_000, `sends again after the server's Retry-After (${wait} ms)`);

    assert.equal((await device.run(["--check"])).code, 1);
    await new Promise((r) => setTimeout(r, 500));
    assert.deepEqual(reports, [200, 200, 429], "no batch before Retry-After");
    const later = JSON.parse(await readFile(queue, "utf8")) as { events: Array<{ type: string }> };
    assert.deepEqual(
      later.events.map((e) => e.type),
      ["checked", "checked"],
    );

    const refused = await httpsCall(fleet.server.url, tls, "POST", "/v1/events", {
      token: fleet.tokens.get("dev-9") as string,
      body: { device: { image: NAME, architecture: "x86_64" }, events: [] },
    });
    assert.equal(refused.status, 429, "refused before its body is even read");
    assert.match(String(refused.headers["retry-after"]), /^\d+$/);
    assert.equal(refused.headers["x-eos-error"], "RATE_LIMITED");
  } finally {
    await device.close();
    await stopServer(fleet.server);
  }
});
