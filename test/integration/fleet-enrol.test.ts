/**
 * Per-device identity, on SQLite and on a real PostgreSQL: the image's
 * fleet key is an enrolment key only; a device (a real os-update run)
 * exchanges it for its own token on first contact and keeps it (0600); an
 * operator revokes one device and that device gets a REVOKED error; a copy of
 * the image enrols as a new device and cannot act as the first; a server
 * without the endpoint gets the key as before.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { copyFile, mkdir, readFile, rm, stat } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { request as httpsRequest } from "node:https";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { runEos } from "../helpers/run.ts";
import { makeTestCert, type RunningServer, type TestCert } from "../helpers/serve.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";
import { startFleetServer, stopServer } from "../helpers/fleet-server.ts";
import { makeDevice, type TestDevice } from "../helpers/device.ts";
import { startPostgres, type Postgres } from "../helpers/postgres.ts";

const NAME = "EOS.x86_64-AB";
const TOKEN_FILE = "eos/device-token.json";

let world: World;
let v1: {
  path: string;
  manifest: { version: string; partitions: { root: { sha256: string; size: number } } };
};
let tls: TestCert;
let pg: Postgres | undefined;
let pgUnavailable = "";

before(async () => {
  world = await makeWorld();
  await writeServerConfig(world, [{ image: `${world.origin.url}/${NAME}.raw.xz`, name: NAME }]);
  const raw = await releaseImage(world, NAME, "1.0.0", { payloadBytes: 1024 * 1024 });
  v1 = {
    path: join(world.dir, "device-v1.raw"),
    manifest: JSON.parse(await readFile(`${raw}.manifest.json`, "utf8")),
  };
  await copyFile(raw, v1.path);
  await releaseImage(world, NAME, "2.0.0", { payloadBytes: 1024 * 1024 });
  const fetched = await runEos("os-update-server", ["fetch", "--config", world.config]);
  assert.equal(fetched.code, 0, fetched.stderr);
  tls = await makeTestCert(world.dir);
  const started = await startPostgres();
  if ("unavailable" in started) pgUnavailable = started.unavailable;
  else pg = started;
});

after(async () => {
  await pg?.stop();
  await world.origin.close();
  await rm(world.dir, { recursive: true, force: true });
});

/** A bare HTTPS request: status, the typed error header and the JSON body. */
async function call(url: string, token: string, method = "GET", body?: string) {
  const ca = await readFile(tls.cert);
  return new Promise<{ status: number; error: string | undefined; body: string }>((resolve, reject) => {
    const headers: Record<string, string> = { authorization: `Bearer ${token}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    const req = httpsRequest(url, { method, ca, headers }, (res) => {
      let text = "";
      res.setEncoding("utf8").on("data", (s: string) => (text += s));
      res.on("end", () =>
        resolve({ status: res.statusCode ?? 0, error: res.headers["x-eos-error"] as string, body: text }),
      );
    });
    req.on("error", reject);
    req.end(body);
  });
}

for (const kind of ["sqlite", "postgres"] as const) {
  describe(`device enrolment on ${kind}`, () => {
    let server: RunningServer;
    let env: NodeJS.ProcessEnv;
    let tokensDir: string;
    let fleetKey: string;
    const devices: TestDevice[] = [];

    before(async () => {
      if (kind === "postgres" && !pg) return;
      const database = kind === "postgres" && pg ? `database: ${await pg.freshDatabase()}\n` : "";
      const fleet = await startFleetServer({
        world,
        dir: join(world.dir, `enrol-${kind}`),
        extraConfig: database,
        deviceIds: [],
        tls,
        enrolmentKey: true,
      });
      ({ server, env, tokensDir } = fleet);
      fleetKey = fleet.enrolmentKey as string;
    });

    after(async () => {
      if (server) await stopServer(server);
      for (const d of devices) await d.close();
    });

    const device = async (options: { registry?: boolean } = {}) => {
      const d = await makeDevice(v1.path, v1.manifest, {
        config: `update:\n  name: ${NAME}\n  url: ${server.url}\n  ca: ${tls.cert}\n`,
        keys: [join(world.keysDir, "release.pub")],
        token: fleetKey,
      });
      devices.push(d);
      // The registry's flakes directory is what says it is set up and mounted.
      if (options.registry)
        await mkdir(join(d.root, "var/lib/containers/storage/flakes"), { recursive: true });
      return d;
    };
    const cli = (args: string[]) => runEos("os-update-server", [...args, "--ca", tls.cert], { env });
    const inventory = async () =>
      new Map(
        (
          JSON.parse((await cli(["devices", "list", "--json"])).stdout.toString()) as {
            devices: Array<{ id: string; state: string }>;
          }
        ).devices.map((d) => [d.id, d.state]),
      );
    const stored = async (d: TestDevice, where: string) =>
      JSON.parse(await readFile(join(d.root, where, TOKEN_FILE), "utf8")) as {
        device: string;
        token: string;
      };

    test("a device exchanges the fleet key for its own token once, keeps it 0600, and reports with it", async (t) => {
      if (!server) return t.skip(`PostgreSQL cannot start here: ${pgUnavailable}`);
      const d = await device({ registry: true });
      const first = await d.run(["--check"]);
      assert.equal(first.code, 1, first.stderr);
      const m = /enrolled with \S+ as device (\S+)/.exec(first.stderr);
      assert.ok(m, first.stderr);
      const id = m[1] as string;
      const kept = await stored(d, "var/lib/containers/storage");
      assert.equal(kept.device, id);
      assert.match(kept.token, /^eosdev_/);
      assert.equal((await stat(join(d.root, "var/lib/containers/storage", TOKEN_FILE))).mode & 0o777, 0o600);
      const again = await d.run(["--check"]);
      assert.equal(again.code, 1, again.stderr);
      assert.doesNotMatch(again.stderr, /enrolled/);
      assert.equal((await inventory()).get(id), "update-available");
      // The key itself is good for enrolment only: no manifest, no reports with it.
      const images = `${server.url}/v1/images/${NAME}/manifest.json`;
      assert.equal((await call(images, fleetKey)).status, 401);
      assert.equal((await call(images, kept.token)).status, 200);
      const onlyRun = await device();
      assert.equal((await onlyRun.run(["--check"])).code, 1);
      assert.match((await stored(onlyRun, "run")).token, /^eosdev_/);
    });

    test("a copied image enrols as a new device and cannot act as the first", async (t) => {
      if (!server) return t.skip(`PostgreSQL cannot start here: ${pgUnavailable}`);
      const original = await device({ registry: true });
      assert.equal((await original.run(["--check"])).code, 1);
      const first = await stored(original, "var/lib/containers/storage");
      // The copy: the same image and fleet key, its own (empty) registry.
      const copy = await device({ registry: true });
      const r = await copy.run(["--check"]);
      assert.equal(r.code, 1, r.stderr);
      const second = await stored(copy, "var/lib/containers/storage");
      assert.notEqual(second.device, first.device);
      assert.notEqual(second.token, first.token);
      const show = JSON.parse((await cli(["devices", "show", first.device, "--json"])).stdout.toString()) as {
        events: Array<{ type: string }>;
      };
      assert.deepEqual(
        show.events.map((e) => e.type),
        ["checked"],
      );
      const report = JSON.stringify({
        device: { image: NAME, architecture: "x86_64" },
        events: [
          {
            type: "failed",
            id: "forged-0001",
            time: new Date().toISOString(),
            stage: "apply",
            code: "IO",
            message: "x",
          },
        ],
      });
      assert.equal((await call(`${server.url}/v1/events`, fleetKey, "POST", report)).status, 401);
    });

    test("an operator revokes one device: it gets REVOKED, the others carry on", async (t) => {
      if (!server) return t.skip(`PostgreSQL cannot start here: ${pgUnavailable}`);
      const [a, b] = [await device(), await device()];
      assert.equal((await a.run(["--check"])).code, 1);
      assert.equal((await b.run(["--check"])).code, 1);
      const ida = (await stored(a, "run")).device;
      const revoked = await cli(["devices", "revoke", ida]);
      assert.equal(revoked.code, 0, revoked.stderr);
      const refused = await a.run(["--check"]);
      assert.equal(refused.code, 3);
      assert.match(refused.stderr, /\[REVOKED\].*revoked this device's token/);
      assert.equal((await b.run(["--check"])).code, 1);
      const twice = await cli(["devices", "revoke", ida]);
      assert.equal(twice.code, 3);
      assert.match(twice.stderr, /\[REFUSED\].*revoked already/);
      const unknown = await cli(["devices", "revoke", "no-such-device"]);
      assert.match(unknown.stderr, /\[NOT_FOUND\]/);
    });

    test("a server without enrolment gets the key as before, and the device says so once", async (t) => {
      if (!server) return t.skip(`PostgreSQL cannot start here: ${pgUnavailable}`);
      // An older server: a shared device token, and no /v1/enrol (a proxy answers 404 there).
      const shared = await runEos("os-update-server", ["token", "add", "shared", "--tokens-dir", tokensDir]);
      const key = shared.stdout.toString().trim();
      const ca = await readFile(tls.cert);
      const proxy: Server = createServer((req, res) => {
        if (req.url === "/v1/enrol") {
          res.writeHead(404, { "content-type": "application/json" }).end('{"error":"no such resource"}\n');
          return;
        }
        const up = httpsRequest(
          `${server.url}${req.url}`,
          { method: req.method, headers: req.headers, ca },
          (r) => {
            res.writeHead(r.statusCode ?? 502, r.headers);
            r.pipe(res);
          },
        );
        req.pipe(up);
      });
      await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
      t.after(() => proxy.close());
      const url = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
      const d = await makeDevice(v1.path, v1.manifest, {
        config: `update:\n  name: ${NAME}\n  url: ${url}\n`,
        keys: [join(world.keysDir, "release.pub")],
        token: key,
      });
      devices.push(d);
      const first = await d.run(["--check"]);
      assert.equal(first.code, 1, first.stderr);
      assert.match(first.stderr, /does not enrol devices: this device uses the fleet key/);
      const second = await d.run(["--check"]);
      assert.equal(second.code, 1, second.stderr);
      assert.doesNotMatch(second.stderr, /enrol/);
      assert.equal(await stat(join(d.root, "run", TOKEN_FILE)).catch(() => undefined), undefined);
      assert.equal((await inventory()).get("shared"), "update-available");
    });
  });
}
