/**
 * POST /v1/enrol is rate-limited by the real server: per enrolment key (a
 * leaked key cannot mint device tokens at will) and per client address,
 * counted before the key is looked at (so guessing keys is slow as well).
 * A refusal is a 429 with Retry-After and the code RATE_LIMITED; the limits
 * come from serve.enrol_limit in the server's config.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { makeWorld, writeServerConfig, type World } from "../helpers/server-world.ts";
import { makeTestCert, type TestCert } from "../helpers/serve.ts";
import { httpsCall, startFleetServer, stopServer, type FleetServer } from "../helpers/fleet-server.ts";
import { runEos } from "../helpers/run.ts";

/** Never fetched here: enrolment needs no image. */
const IMAGES = [{ image: "http://127.0.0.1:9/EOS.x86_64-AB.raw.xz", name: "EOS.x86_64-AB" }];

let world: World;
let tls: TestCert;
let fleet: FleetServer;

before(async () => {
  world = await makeWorld();
  await writeServerConfig(world, IMAGES);
  tls = await makeTestCert(world.dir);
  fleet = await startFleetServer({
    world,
    dir: join(world.dir, "limit"),
    // One a minute earned back: nothing is refilled within the test.
    extraConfig:
      "serve:\n  enrol_limit:\n    per_address: { burst: 4, per_minute: 1 }\n" +
      "    per_key: { burst: 2, per_minute: 1 }\n    max_clients: 100\n",
    deviceIds: [],
    tls,
    enrolmentKey: true,
  });
});

after(async () => {
  if (fleet) await stopServer(fleet.server);
  await world?.origin.close();
  if (world) await rm(world.dir, { recursive: true, force: true });
});

const enrol = (token: string) => httpsCall(fleet.server.url, tls, "POST", "/v1/enrol", { token, body: {} });

test("enrolment is limited per key, then per address, with a clear 429 and Retry-After", async () => {
  const key = fleet.enrolmentKey as string;
  for (let i = 0; i < 2; i++) assert.equal((await enrol(key)).status, 201, `enrolment ${i}`);

  const perKey = await enrol(key);
  assert.equal(perKey.status, 429, perKey.text);
  assert.equal(perKey.headers["x-eos-error"], "RATE_LIMITED");
  assert.match(String(perKey.headers["retry-after"]), /^[1-9]\d*$/);
  assert.ok(Number(perKey.headers["retry-after"]) <= 60, String(perKey.headers["retry-after"]));
  const body = JSON.parse(perKey.text) as { error: string; code: string; hint: string };
  assert.match(body.error, /too many enrolments from enrolment key fleet \(at most 2 at once, 1 a minute\)/);
  assert.equal(body.code, "REFUSED");
  assert.match(body.hint, /serve\.enrol_limit/);

  // The address has spent 3 of its 4; a guessed key spends the last one and is refused as unknown...
  assert.equal((await enrol("x".repeat(64))).status, 401);
  // ...and the next guess is not even looked at.
  const perAddress = await enrol("y".repeat(64));
  assert.equal(perAddress.status, 429, perAddress.text);
  assert.match(perAddress.text, /too many enrolments from this address/);
  assert.ok(Number(perAddress.headers["retry-after"]) >= 1);

  // Other routes are not limited by it.
  const whoami = await httpsCall(fleet.server.url, tls, "GET", "/v1/admin/whoami", {
    token: fleet.env.EOS_ADMIN_TOKEN as string,
  });
  assert.equal(whoami.status, 200, whoami.text);
});

test("a bad enrol_limit stops the server at start, naming the field", async () => {
  await writeServerConfig(world, IMAGES, "serve:\n  enrol_limit:\n    per_key: { burst: 0 }\n");
  const r = await runEos("os-update-server", ["serve", "--config", world.config, "--port", "0", "--no-auth"]);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr.toString(), /serve\.enrol_limit\.per_key\.burst/);
});
