/**
 * Rollouts end to end, on SQLite and on a real PostgreSQL. 20 simulated
 * devices (real HTTPS checks of the manifest and real event reports, each
 * with its own device token) and 2 real devices (real os-update runs on
 * their own disks, offline --root-device style) go through one rollout of
 * 2.0.0 over 1.0.0 in two waves: the first wave's devices fall back and the
 * rollout pauses by itself; the server restarts and still knows why; an
 * operator resumes; the waves open as the devices commit and the soak
 * passes; a pin holds one device back; abort assigns 1.0.0 back, which the
 * real device that trusts the server's assignment key installs and the one
 * that trusts another key refuses.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { copyFile, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { request as httpsRequest } from "node:https";
import { runEos } from "../helpers/run.ts";
import { makeTestCert, startServer, type RunningServer, type TestCert } from "../helpers/serve.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";
import { startFleetServer, stopServer } from "../helpers/fleet-server.ts";
import { makeDevice, type TestDevice } from "../helpers/device.ts";
import { startPostgres, type Postgres } from "../helpers/postgres.ts";
import { parseWaves, waveOf } from "../../src/core/fleet/rollout.ts";
import { encodeGrubenv } from "../../src/core/update/grubenv.ts";

const NAME = "EOS.x86_64-AB";
const SIMS = Array.from({ length: 20 }, (_, i) => `sim-${String(i).padStart(2, "0")}`);
const REAL = ["real-trusts", "real-other-key"] as const;
const ROLLOUT = "r-main";
const WAVES = "30%,100%";
/** Longer than the first wave takes to commit, so the timer (not a report) must open the next wave. */
const SOAK = 6;

interface Manifest {
  version: string;
  partitions: { root: { sha256: string; size: number } };
}

let world: World;
let v1Manifest: Manifest;
let v2Manifest: Manifest;
let tls: TestCert;
let pg: Postgres | undefined;
let pgUnavailable = "";
let keys: { private: string; public: string; otherPublic: string };

before(async () => {
  world = await makeWorld();
  await writeServerConfig(world, [{ image: `${world.origin.url}/${NAME}.raw.xz`, name: NAME }]);
  const v1 = await releaseImage(world, NAME, "1.0.0", { payloadBytes: 1024 * 1024 });
  v1Manifest = JSON.parse(await readFile(`${v1}.manifest.json`, "utf8")) as Manifest;
  await copyFile(v1, join(world.dir, "device-v1.raw"));
  // Fetched one after the other, so the server keeps both: a rollout names two published versions.
  assert.equal((await runEos("os-update-server", ["fetch", "--config", world.config])).code, 0);
  const v2 = await releaseImage(world, NAME, "2.0.0", { payloadBytes: 1024 * 1024 });
  v2Manifest = JSON.parse(await readFile(`${v2}.manifest.json`, "utf8")) as Manifest;
  const fetched = await runEos("os-update-server", ["fetch", "--config", world.config]);
  assert.equal(fetched.code, 0, fetched.stderr);
  tls = await makeTestCert(world.dir);
  const pem = (k: import("node:crypto").KeyObject, type: "pkcs8" | "spki") =>
    k.export({ format: "pem", type }) as string;
  const signer = generateKeyPairSync("ed25519");
  const other = generateKeyPairSync("ed25519");
  keys = {
    private: join(world.dir, "assignment.key"),
    public: join(world.dir, "assignment.pub"),
    otherPublic: join(world.dir, "other-assignment.pub"),
  };
  await writeFile(keys.private, pem(signer.privateKey, "pkcs8"), { mode: 0o600 });
  await writeFile(keys.public, pem(signer.publicKey, "spki"));
  await writeFile(keys.otherPublic, pem(other.publicKey, "spki"));
  const started = await startPostgres();
  if ("unavailable" in started) pgUnavailable = started.unavailable;
  else pg = started;
});

after(async () => {
  await pg?.stop();
  await world.origin.close();
  await rm(world.dir, { recursive: true, force: true });
});

const wave = (id: string) => waveOf({ id: ROLLOUT, waves: parseWaves(WAVES) }, id, []);

for (const kind of ["sqlite", "postgres"] as const) {
  describe(`rollouts on ${kind}`, () => {
    let dir: string;
    let config: string;
    let tokensDir: string;
    const tokens = new Map<string, string>();
    const real = new Map<string, TestDevice>();
    let server: RunningServer;
    let env: NodeJS.ProcessEnv;
    let port: string;
    let seq = 0;

    before(async () => {
      if (kind === "postgres" && !pg) return;
      dir = join(world.dir, kind);
      const database = kind === "postgres" && pg ? `database: ${await pg.freshDatabase()}\n` : "";
      const serve = `serve:\n  rollout_interval: 500ms\n  assignment_key: ${keys.private}\n`;
      const fleet = await startFleetServer({
        world,
        dir,
        extraConfig: `${database}${serve}`,
        deviceIds: [...SIMS, ...REAL],
        tls,
      });
      ({ config, tokensDir, env, server } = fleet);
      for (const [id, token] of fleet.tokens) tokens.set(id, token);
      port = String(server.port);
      for (const [id, trusted] of [
        [REAL[0], keys.public],
        [REAL[1], keys.otherPublic],
      ] as const) {
        real.set(
          id,
          await makeDevice(join(world.dir, "device-v1.raw"), v1Manifest, {
            config:
              `update:\n  name: ${NAME}\n  url: ${server.url}\n  ca: ${tls.cert}\n  tries: 3\n` +
              `  assignment_keys:\n    - ${trusted}\n`,
            keys: [join(world.keysDir, "release.pub")],
            token: tokens.get(id) as string,
          }),
        );
      }
    });

    after(async () => {
      if (server) await stopServer(server);
      for (const d of real.values()) await d.close();
    });

    const cli = (args: string[], extra: NodeJS.ProcessEnv = {}) =>
      runEos("os-update-server", [...args, "--ca", tls.cert], { env: { ...env, ...extra } });
    const call = async (method: string, path: string, token: string, body?: unknown) => {
      const ca = await readFile(tls.cert);
      return new Promise<{ status: number; text: string }>((resolve, reject) => {
        const headers: Record<string, string> = { authorization: `Bearer ${token}` };
        if (body !== undefined) headers["content-type"] = "application/json";
        const req = httpsRequest(`${server.url}${path}`, { method, ca, headers, agent: false }, (res) => {
          let text = "";
          res.setEncoding("utf8").on("data", (s: string) => (text += s));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
        });
        req.on("error", reject);
        req.end(body === undefined ? undefined : JSON.stringify(body));
      });
    };
    /** What the server offers this device: the version in the manifest it gets. */
    const offered = async (id: string) => {
      const r = await call("GET", `/v1/images/${NAME}/manifest.json`, tokens.get(id) as string);
      assert.equal(r.status, 200, r.text);
      return (JSON.parse(r.text) as Manifest).version;
    };
    /** The version /v1/images lists for this device. */
    const listed = async (id: string) => {
      const r = await call("GET", "/v1/images", tokens.get(id) as string);
      assert.equal(r.status, 200, r.text);
      const images = (JSON.parse(r.text) as { images: Array<{ name: string; version: string }> }).images;
      return images.find((i) => i.name === NAME)?.version;
    };
    /** A simulated device's report: what happened, and its slots afterwards. */
    const report = async (
      id: string,
      event: Record<string, unknown>,
      slots: { A: string; B: string | null; running: "A" | "B" },
    ) => {
      const body = {
        device: {
          image: NAME,
          architecture: "x86_64",
          slots: { A: slots.A, B: slots.B },
          running: slots.running,
        },
        events: [
          { id: `${id}-ev-${String(++seq).padStart(4, "0")}`, time: new Date().toISOString(), ...event },
        ],
      };
      const r = await call("POST", "/v1/events", tokens.get(id) as string, body);
      assert.equal(r.status, 200, r.text);
    };
    const commit = (id: string) =>
      report(
        id,
        { type: "committed", version: "2.0.0", slot: "B" },
        { A: "1.0.0", B: "2.0.0", running: "B" },
      );
    const fellBack = (id: string) =>
      report(
        id,
        { type: "fell_back", version: "1.0.0", slot: "A" },
        { A: "1.0.0", B: "2.0.0", running: "A" },
      );
    const show = async () => {
      const r = await call("GET", `/v1/admin/rollouts/${ROLLOUT}`, env.EOS_ADMIN_TOKEN as string);
      assert.equal(r.status, 200, r.text);
      return JSON.parse(r.text) as {
        rollout: { state: string; current_wave: number; reason: string | null };
        wave: { members: number; succeeded: number; errors: number };
      };
    };
    const waitFor = async (what: string, ok: (s: Awaited<ReturnType<typeof show>>) => boolean) => {
      const deadline = Date.now() + 15_000;
      for (;;) {
        const s = await show();
        if (ok(s)) return s;
        if (Date.now() > deadline) assert.fail(`${what}: still ${JSON.stringify(s)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    const all = [...SIMS, ...REAL];
    const first = all.filter((id) => wave(id) === 0);
    const second = all.filter((id) => wave(id) === 1);
    /** A real device takes what it is offered, boots it on trial and commits it. */
    const realUpdate = async (d: TestDevice) => {
      const applied = await d.run(["--apply"]);
      assert.equal(applied.code, 0, applied.stderr);
      await d.boot("B", "COMMIT_UPDATE");
      const committed = await d.run(["--commit"]);
      assert.equal(committed.code, 0, committed.stderr);
    };

    test("without a rollout every device gets the newest version; bad rollouts are refused by name", async (t) => {
      if (!server) return t.skip(`PostgreSQL cannot start here: ${pgUnavailable}`);
      assert.ok(first.length >= 3 && second.length >= 3, `both waves have devices: ${first} / ${second}`);
      for (const id of SIMS) {
        assert.equal(await offered(id), "2.0.0");
        assert.equal(await listed(id), "2.0.0");
        await report(
          id,
          {
            type: "checked",
            version: "1.0.0",
            slot: "A",
            sha256: v1Manifest.partitions.root.sha256,
            available: true,
          },
          { A: "1.0.0", B: null, running: "A" },
        );
      }
      const waves = await cli(["rollout", "create", NAME, "2.0.0", "--waves", "10%,50%"]);
      assert.equal(waves.code, 2);
      assert.match(waves.stderr, /--waves: the last wave must be 100%/);
      const share = await cli([
        "rollout",
        "create",
        NAME,
        "2.0.0",
        "--waves",
        "100%",
        "--error-threshold",
        "2",
      ]);
      assert.equal(share.code, 2);
      assert.match(share.stderr, /--error-threshold: a share such as 5% or 0\.05/);
      const missing = await cli(["rollout", "create", NAME, "9.9.9", "--waves", "100%"]);
      assert.equal(missing.code, 3);
      assert.match(missing.stderr, /version: EOS\.x86_64-AB 9\.9\.9 is not published on this server/);
      const viewer = await cli(["rollout", "create", NAME, "2.0.0", "--waves", "100%"], {
        EOS_ADMIN_TOKEN: env.VIEWER,
      });
      assert.equal(viewer.code, 3);
      assert.match(viewer.stderr, /\[AUTH\].*needs the operator role/);
    });

    test("20+ devices: the first wave gets 2.0.0, the rest stay up to date; a falling-back wave pauses the rollout", async (t) => {
      if (!server) return t.skip(`PostgreSQL cannot start here: ${pgUnavailable}`);
      const created = await cli([
        "rollout",
        "create",
        NAME,
        "2.0.0",
        "--id",
        ROLLOUT,
        "--waves",
        WAVES,
        "--soak",
        `${SOAK}s`,
        "--error-threshold",
        "20%",
        "--success-threshold",
        "80%",
        "--json",
      ]);
      assert.equal(created.code, 0, created.stderr);
      assert.equal(
        JSON.parse(created.stdout.toString()).rollout.previous,
        "1.0.0",
        "previous: the older published",
      );
      for (const id of SIMS) {
        const assigned = wave(id) === 0 ? "2.0.0" : "1.0.0";
        assert.equal(await offered(id), assigned, id);
        assert.equal(await listed(id), assigned, `${id}: /v1/images lists the assigned version`);
      }
      for (const [id, d] of real) {
        const checked = await d.run(["--check"]);
        assert.equal(checked.code, wave(id) === 0 ? 1 : 0, `${id}: ${checked.stdout}${checked.stderr}`);
      }
      // The first wave's simulated devices install 2.0.0 and GRUB falls back to 1.0.0 on each.
      const firstSims = first.filter((id) => SIMS.includes(id));
      // The rollout is judged on each report: the one that crosses the threshold pauses it at once.
      const crossing = Array.from({ length: first.length }, (_, k) => k + 1).find(
        (k) => k / first.length > 0.2,
      );
      assert.ok(crossing !== undefined && crossing <= firstSims.length);
      for (const [i, id] of firstSims.entries()) {
        await fellBack(id);
        assert.equal((await show()).rollout.state, i + 1 < crossing ? "running" : "paused", `after ${i + 1}`);
      }
      const paused = await show();
      assert.match(
        paused.rollout.reason ?? "",
        new RegExp(
          `^wave 1: ${crossing} of ${first.length} devices \\(.*\\) failed, fell back or rolled back; the error threshold is 20%$`,
        ),
      );
      const text = await cli(["rollout", "show", ROLLOUT], { EOS_ADMIN_TOKEN: env.VIEWER });
      assert.match(text.stdout.toString(), /state: +paused\nreason: +wave 1: /);
      for (const id of second)
        if (SIMS.includes(id)) assert.equal(await offered(id), "1.0.0", "a paused rollout opens no wave");
    });

    test("restarted, the server keeps the paused rollout; resume, the waves open as devices commit, a pin holds one back", async (t) => {
      if (!server) return t.skip(`PostgreSQL cannot start here: ${pgUnavailable}`);
      await stopServer(server);
      server = await startServer({ config, tokensDir, tls, extraArgs: ["--port", port] });
      const kept = await show();
      assert.equal(kept.rollout.state, "paused");
      assert.match(kept.rollout.reason ?? "", /^wave 1: /);
      const denied = await cli(["rollout", "resume", ROLLOUT], { EOS_ADMIN_TOKEN: env.VIEWER });
      assert.equal(denied.code, 3);
      assert.match(denied.stderr, /needs the operator role/);
      assert.equal((await cli(["rollout", "resume", ROLLOUT])).code, 0);
      const resumed = Date.now();
      const again = await cli(["rollout", "resume", ROLLOUT]);
      assert.equal(again.code, 3);
      assert.match(again.stderr, /error \[REFUSED\]: rollout r-main is running: it cannot resume/);

      const pinned = second.find((id) => SIMS.includes(id)) as string;
      assert.equal((await cli(["rollout", "pin", pinned, "1.0.0"])).code, 0);
      // The first wave retries and commits; only then, and after the soak, does the second open.
      for (const id of first) {
        const d = real.get(id);
        if (d) await realUpdate(d);
        else await commit(id);
      }
      if (Date.now() - resumed < SOAK * 1000 - 500)
        assert.equal(
          (await show()).rollout.current_wave,
          0,
          "soaking: every device committed, the wave stays",
        );
      await waitFor("second wave", (s) => s.rollout.current_wave === 1 && s.rollout.state === "running");
      for (const id of SIMS) assert.equal(await offered(id), id === pinned ? "1.0.0" : "2.0.0", id);
      assert.equal((await cli(["rollout", "unpin", pinned])).code, 0);
      assert.equal(await offered(pinned), "2.0.0");
      for (const id of second) {
        const d = real.get(id);
        if (d) await realUpdate(d);
        else await commit(id);
      }
      await waitFor("completed", (s) => s.rollout.state === "completed");
      const list = JSON.parse(
        (await cli(["rollout", "list", "--json"], { EOS_ADMIN_TOKEN: env.VIEWER })).stdout.toString(),
      ) as {
        rollouts: Array<{ id: string; state: string }>;
      };
      assert.deepEqual(
        list.rollouts.map((r) => [r.id, r.state]),
        [[ROLLOUT, "completed"]],
      );
    });

    test("abort assigns 1.0.0 back: a signed downgrade the trusting device installs and the other refuses", async (t) => {
      if (!server) return t.skip(`PostgreSQL cannot start here: ${pgUnavailable}`);
      const aborted = await cli(["rollout", "abort", ROLLOUT, "--reason", "bad batch", "--json"]);
      assert.equal(aborted.code, 0, aborted.stderr);
      assert.deepEqual(
        [
          JSON.parse(aborted.stdout.toString()).rollout.state,
          JSON.parse(aborted.stdout.toString()).rollout.reason,
        ],
        ["aborted", "bad batch"],
      );
      for (const id of SIMS) assert.equal(await offered(id), "1.0.0", id);
      const trusting = real.get(REAL[0]) as TestDevice;
      const other = real.get(REAL[1]) as TestDevice;
      const checked = await trusting.run(["--check", "--json"]);
      assert.equal(checked.code, 1, `${checked.stdout}${checked.stderr}`);
      assert.equal(JSON.parse(checked.stdout).downgrade, true);
      const applied = await trusting.run(["--apply"]);
      assert.equal(applied.code, 0, applied.stderr);
      assert.equal((await trusting.grubenv()).get("eos_A_version"), "1.0.0");
      assert.equal((await trusting.grubenv()).get("eos_trial"), "A");

      assert.equal((await other.run(["--check"])).code, 0, "not an update without a trusted signature");
      const refused = await other.run(["--apply"]);
      assert.equal(refused.code, 3);
      assert.match(refused.stderr, /\[DOWNGRADE\].*not signed by a trusted assignment key/);
      assert.equal((await other.grubenv()).get("eos_trial"), "", "nothing was written");

      // The bare answer a man in the middle could forge: no valid signature, no downgrade.
      const token = tokens.get(REAL[1]) as string;
      const doc = await call(
        "GET",
        `/v1/images/${NAME}/assignment?from=${v2Manifest.partitions.root.sha256}`,
        token,
      );
      assert.equal(doc.status, 200, doc.text);
      assert.equal(JSON.parse(doc.text).assignment.reason, `abort ${ROLLOUT}`);
      const notRunning = await call("GET", `/v1/images/${NAME}/assignment?from=${"0".repeat(64)}`, token);
      assert.equal(notRunning.status, 404, "only a device running the aborted version is sent back");
    });

    test("a trial that runs out of tries is reported as fell_back at the next boot, once", async (t) => {
      if (!server) return t.skip(`PostgreSQL cannot start here: ${pgUnavailable}`);
      const d = real.get(REAL[0]) as TestDevice;
      // 1.0.0 is on trial in slot A since the abort; GRUB spends its tries on it and boots B again.
      const env = await d.grubenv();
      assert.equal(env.get("eos_trial"), "A");
      env.set("eos_trial", "");
      env.set("eos_tries", "0");
      await writeFile(join(d.esp, "EFI/BOOT/grubenv"), encodeGrubenv(env));
      await d.boot("B");
      const first = await d.run(["--commit"]);
      assert.equal(first.code, 0, first.stderr);
      assert.match(
        first.stdout + first.stderr,
        /1\.0\.0 did not come up \(tries-ran-out\): slot B runs again/,
      );
      assert.equal((await d.run(["--commit"])).code, 0);
      const shown = await cli(["devices", "show", REAL[0], "--json"]);
      const answer = JSON.parse(shown.stdout.toString()) as {
        device: { state: string; running_version: string };
        events: Array<{ type: string; data: { version?: string; slot?: string } }>;
      };
      const fell = answer.events.filter((e) => e.type === "fell_back");
      assert.deepEqual(
        fell.map((e) => [e.data.version, e.data.slot]),
        [["1.0.0", "B"]],
      );
      assert.deepEqual([answer.device.state, answer.device.running_version], ["fell-back", "2.0.0"]);
    });
  });
}
