/**
 * Every wait of a download is bounded, and signals stop it at once (issue
 * 11, findings 2 and 3): a server or origin that trickles bytes never trips a
 * socket timeout, so the stall rule and the overall deadline must; SIGTERM
 * while the stream is slow stops os-update within a second, leaving the
 * target slot invalid and the boot state as it was; one stalled origin does
 * not keep the update server from publishing the others.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFile, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { DIST, runEos } from "../helpers/run.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";
import { makeDevice, type TestDevice } from "../helpers/device.ts";
import { hostileServer, type HostileServer } from "../helpers/hostile-server.ts";

const NAME = "EOS.x86_64-AB";

interface Manifest {
  version: string;
  partitions: { root: { sha256: string; size: number } };
}

describe("os-update: a trickling server is bounded; signals stop the download at once", () => {
  let world: World;
  let device: TestDevice;
  let slow: HostileServer;

  before(async () => {
    world = await makeWorld();
    const v1Raw = await releaseImage(world, NAME, "1.0.0", { payloadBytes: 2 * 1024 * 1024 });
    const v1 = JSON.parse(await readFile(`${v1Raw}.manifest.json`, "utf8")) as Manifest;
    await copyFile(v1Raw, join(world.dir, "device-v1.raw"));
    const v2Raw = await releaseImage(world, NAME, "2.0.0", { payloadBytes: 3 * 1024 * 1024 });
    const { partitionBytes } = await import("../helpers/sample-image.ts");
    const base = `/v1/images/${NAME}`;
    // The root arrives at 64 KiB, then 10 bytes every 100 ms: never idle, never done.
    slow = await hostileServer(
      new Map([
        [`${base}/manifest.json`, await readFile(`${v2Raw}.manifest.json`)],
        [`${base}/manifest.json.sig`, await readFile(`${v2Raw}.manifest.json.sig`)],
        [`${base}/root`, await partitionBytes(v2Raw, "p.lxreadonly")],
      ]),
      { trickle: new Map([[`${base}/root`, { after: 64 * 1024, bytesPerTick: 10, tickMs: 100 }]]) },
    );
    device = await makeDevice(join(world.dir, "device-v1.raw"), v1, {
      config: `update:\n  name: ${NAME}\n  url: ${slow.url}\n`,
      keys: [join(world.keysDir, "release.pub")],
    });
  });
  after(async () => {
    await device?.close();
    await slow?.close();
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  });

  const configure = (extra: string) =>
    writeFile(
      join(device.root, "etc/os-update.yml"),
      `update:\n  name: ${NAME}\n  url: ${slow.url}\n${extra}`,
    );

  async function assertUntouched(before: Map<string, string>) {
    const after = await device.grubenv();
    assert.equal(after.get("eos_default"), "A", "the default slot is still A");
    assert.equal(after.get("eos_trial"), "", "nothing on trial");
    assert.equal(after.get("eos_B_sha256"), "", "slot B is marked invalid (no verified record)");
    assert.equal(after.get("eos_A_sha256"), before.get("eos_A_sha256"), "slot A's record is unchanged");
    assert.equal(device.calls.length, 0, "no kexec, no reboot");
  }

  test("the overall deadline ends a download that never stalls (TIMEOUT, exit 3)", async () => {
    await configure("  deadline: 3s\n  stall: 60s\n");
    const before = await device.grubenv();
    const t = performance.now();
    const r = await device.run(["--apply"]);
    const seconds = (performance.now() - t) / 1000;
    assert.equal(r.code, 3, r.stdout);
    assert.match(r.stderr, /TIMEOUT.*not finished by its deadline/);
    assert.ok(seconds < 15, `bounded by the deadline (${seconds.toFixed(1)} s)`);
    await assertUntouched(before);
  });

  test("less than stall_bytes per stall window is a stall: reconnect and resume, then give up (STALLED)", async () => {
    await configure("  stall: 1s\n  stall_bytes: 4096\n");
    const before = await device.grubenv();
    const r = await device.run(["--apply"]);
    assert.equal(r.code, 3, r.stdout);
    assert.match(r.stderr, /download interrupted at .*STALLED|a stall/);
    assert.match(r.stderr, /STALLED.*a stall: less than 4096 bytes per 1 s/);
    const roots = slow.requests.filter((u) => u.endsWith("/root")).length;
    assert.ok(roots >= 2, `reconnected after a stall (${roots} requests for the root)`);
    await assertUntouched(before);
  });

  test("an abort (SIGINT/SIGTERM in the command) stops a slow download within a second (INTERRUPTED, 130)", async () => {
    await configure("");
    const before = await device.grubenv();
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 1500).unref();
    const t = performance.now();
    const r = await device.run(["--apply"], { signal: controller.signal });
    const afterAbort = (performance.now() - t) / 1000 - 1.5;
    assert.equal(r.code, 130, r.stderr);
    assert.match(r.stderr, /INTERRUPTED.*stopped by a signal/);
    assert.ok(afterAbort < 1, `stopped ${afterAbort.toFixed(2)} s after the signal`);
    await assertUntouched(before);
  });

  test("SIGTERM to the os-update process stops it within a second, exit 130", async () => {
    await configure("");
    const before = await device.grubenv();
    const child = spawn(process.execPath, [join(DIST, "os-update.mjs"), "--apply"], {
      env: { ...process.env, EOS_ROOT: device.root },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (s: string) => (stderr += s));
    child.stdout.resume();
    // Wait until the download is under way (slot B has been invalidated first).
    for (let i = 0; i < 100 && (await device.grubenv()).get("eos_B_sha256") !== ""; i++)
      await new Promise((r) => setTimeout(r, 100));
    await new Promise((r) => setTimeout(r, 1000));
    const t = performance.now();
    child.kill("SIGTERM");
    const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
    const seconds = (performance.now() - t) / 1000;
    assert.equal(code, 130, stderr);
    assert.ok(seconds < 1, `exited ${seconds.toFixed(2)} s after SIGTERM`);
    assert.match(stderr, /INTERRUPTED/);
    await assertUntouched(before);
  });
});

describe("os-update-server fetch: a stalled origin is bounded and delays no other image", () => {
  let world: World;
  let slowOrigin: HostileServer;

  before(async () => {
    world = await makeWorld();
  });
  after(async () => {
    await slowOrigin?.close();
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  });

  test("the stalled image fails with STALLED after the stall window; the other is published in the same run", async () => {
    const stalled = "EOS.x86_64-AB-slow";
    const fine = "EOS.x86_64-AB-fine";
    const raw = await releaseImage(world, stalled, "1.0.0", {
      manifestName: NAME,
      payloadBytes: 4 * 1024 * 1024,
    });
    await releaseImage(world, fine, "1.0.0", { manifestName: NAME });
    const xz = await readFile(join(world.originDir, `${stalled}.raw.xz`));
    slowOrigin = await hostileServer(
      new Map([
        [`/${stalled}.raw.xz`, xz],
        [`/${stalled}.raw.manifest.json`, await readFile(`${raw}.manifest.json`)],
        [`/${stalled}.raw.manifest.json.sig`, await readFile(`${raw}.manifest.json.sig`)],
      ]),
      { trickle: new Map([[`/${stalled}.raw.xz`, { after: 256 * 1024, bytesPerTick: 1, tickMs: 200 }]]) },
    );
    await writeServerConfig(
      world,
      [
        { image: `${slowOrigin.url}/${stalled}.raw.xz`, name: stalled },
        { image: `${world.origin.url}/${fine}.raw.xz`, name: fine },
      ],
      "stall: 2s\n",
    );
    const t = performance.now();
    const r = await runEos("os-update-server", ["fetch", "--config", world.config]);
    const seconds = (performance.now() - t) / 1000;
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stdout.toString(), new RegExp(`${stalled}: failed: .*a stall`));
    assert.match(r.stdout.toString(), new RegExp(`${fine}: published 1\\.0\\.0`));
    assert.ok(seconds < 60, `bounded (${seconds.toFixed(1)} s)`);
    const published = await readFile(join(world.imagesDir, `${stalled}.manifest.json`), "utf8").catch(
      () => undefined,
    );
    assert.equal(published, undefined, "nothing of the stalled image is published");
  });
});
