import { startServer } from "../helpers/serve.ts";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { copyFile, readFile, stat, writeFile } from "node:fs/promises";
import { writeBootControl } from "../../src/io/update/boot-control.ts";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { DIST, runEos } from "../helpers/run.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";
import { makeDevice, type TestDevice } from "../helpers/device.ts";
import { startFlakyProxy } from "../helpers/flaky-proxy.ts";

const NAME = "EOS.x86_64-AB";

interface Manifest {
  version: string;
  partitions: { root: { sha256: string; size: number } };
}

describe("os-update under faults", () => {
  let world: World;
  let server: ChildProcess;
  let serverPort: number;
  const serverLog: Array<Record<string, unknown>> = [];
  let token: string;
  let v1Manifest: Manifest;
  let device: TestDevice;
  const config = (port: number) => `update:\n  name: ${NAME}\n  url: http://127.0.0.1:${port}\n`;
  const publish = async () =>
    assert.equal((await runEos("os-update-server", ["fetch", "--config", world.config])).code, 0);

  before(async () => {
    world = await makeWorld();
    await writeServerConfig(world, [{ image: `${world.origin.url}/${NAME}.raw.xz`, name: NAME }]);
    const v1 = await releaseImage(world, NAME, "1.0.0", { payloadBytes: 12 * 1024 * 1024 });
    v1Manifest = JSON.parse(await readFile(`${v1}.manifest.json`, "utf8")) as Manifest;
    await copyFile(v1, join(world.dir, "device-v1.raw"));
    await releaseImage(world, NAME, "2.0.0", { payloadBytes: 12 * 1024 * 1024 });
    await publish();
    const tokens = join(world.dir, "tokens");
    token = (await runEos("os-update-server", ["token", "add", "dev", "--tokens-dir", tokens])).stdout
      .toString()
      .trim();
    const running = await startServer({ config: world.config, tokensDir: tokens });
    server = running.child;
    serverPort = running.port;
    server.stdout?.on("data", (s: string) => {
      for (const line of s.split("\n").filter(Boolean))
        serverLog.push(JSON.parse(line) as Record<string, unknown>);
    });
    device = await makeDevice(join(world.dir, "device-v1.raw"), v1Manifest, {
      config: config(serverPort),
      keys: [join(world.keysDir, "release.pub")],
      token,
    });
  });

  after(async () => {
    server?.kill("SIGTERM");
    await device?.close();
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  });

  test("a process killed in the middle of --apply leaves slot A booting and v2 still on offer; the next apply takes over", async () => {
    // A real crash: the command as a process, SIGKILLed while it writes slot B (slowed to 3 MB/s so it is caught mid-write).
    const slow = await startFlakyProxy(serverPort, Number.MAX_SAFE_INTEGER, 0, 3 * 1024 * 1024);
    await writeFile(join(device.root, "etc/os-update.yml"), config(slow.port));
    const child = spawn(process.execPath, [join(DIST, "os-update.mjs"), "--apply"], {
      env: { ...process.env, EOS_ROOT: device.root },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (s: string) => (stderr += s));
    child.stdout.resume();
    await new Promise<void>((resolve, reject) => {
      const timer = setInterval(async () => {
        const env = await device.grubenv().catch(() => undefined);
        // Slot B has been invalidated, so writing has begun.
        if (env?.get("eos_B_version") === "" && stderr.length >= 0) {
          clearInterval(timer);
          setTimeout(() => {
            child.kill("SIGKILL");
            resolve();
          }, 700);
        }
      }, 20);
      child.on("exit", () => {
        clearInterval(timer);
        reject(new Error(`os-update finished before it could be killed: ${stderr}`));
      });
    }).catch((error: unknown) => {
      throw error;
    });
    await new Promise((r) => child.once("close", r));
    await slow.close();
    await writeFile(join(device.root, "etc/os-update.yml"), config(serverPort));
    const env = await device.grubenv();
    assert.equal(env.get("eos_default"), "A");
    assert.equal(env.get("eos_trial"), "", "the half-written slot is not on trial");
    assert.equal(env.get("eos_B_sha256"), "");
    assert.ok(await stat(join(device.root, "run/os-update.lock")), "the dead process left its lock behind");
    const check = await device.run(["--check"]);
    assert.equal(check.code, 1, check.stderr);
    assert.match(check.stdout, /update available: 1.0.0 → 2.0.0/);
    const apply = await device.run(["--apply"]);
    assert.equal(apply.code, 0, apply.stderr);
    assert.equal((await device.grubenv()).get("eos_trial"), "B");
  });

  test("an interrupted download resumes with Range where it broke off", async () => {
    await device.boot("A");
    const proxy = await startFlakyProxy(serverPort, 6 * 1024 * 1024);
    try {
      // Start again from A as the only valid slot.
      const env = await device.grubenv();
      const reset = {
        eos_default: "A",
        eos_trial: "",
        eos_tries: "0",
        eos_B_version: "",
        eos_B_sha256: "",
        eos_B_size: "",
      };
      for (const [k, v] of Object.entries(reset)) env.set(k, v);
      await writeBootControl(device.esp, env);
      await writeFile(join(device.root, "etc/os-update.yml"), config(proxy.port));
      serverLog.length = 0;
      // The full stream's own resume (the chunk path would fetch only what slot B lacks).
      const apply = await device.run(["--apply", "--no-delta"]);
      assert.equal(apply.code, 0, apply.stderr);
      assert.equal(proxy.cuts, 1, "the proxy broke one download off");
      assert.match(apply.stderr, /download interrupted at \d+ of \d+ bytes.*resuming/);
      const rootRequests = serverLog.filter((l) => String(l.path).endsWith("/root"));
      // Earlier tests' aborted streams may still log here; what matters is that a ranged request resumed it.
      assert.ok(
        rootRequests.some((l) => l.status === 206),
        `a ranged (206) request resumed the download: ${JSON.stringify(rootRequests.map((l) => l.status))}`,
      );
      assert.equal((await device.grubenv()).get("eos_B_version"), "2.0.0");
    } finally {
      await proxy.close();
      await writeFile(join(device.root, "etc/os-update.yml"), config(serverPort));
    }
  });

  test("a replayed older signed manifest is not an update and --apply refuses it as a downgrade", async () => {
    await device.boot("B", "COMMIT_UPDATE");
    assert.equal((await device.run(["--commit"])).code, 0);
    await device.boot("B");
    await releaseImage(world, NAME, "1.0.0", { payloadBytes: 12 * 1024 * 1024 });
    await publish();
    const check = await device.run(["--check"]);
    assert.equal(check.code, 0, check.stderr);
    assert.match(check.stdout, /not newer than the running 2.0.0: not an update/);
    const before = await device.grubenv();
    const apply = await device.run(["--apply"]);
    assert.equal(apply.code, 3);
    assert.match(apply.stderr, /DOWNGRADE/);
    assert.deepEqual(await device.grubenv(), before, "boot control unchanged");
  });

  test("a root larger than the slot is refused before anything is written", async () => {
    await releaseImage(world, NAME, "3.0.0", { rootSizeMiB: 24 });
    await publish();
    const before = await device.grubenv();
    const apply = await device.run(["--apply"]);
    assert.equal(apply.code, 3);
    assert.match(apply.stderr, /SLOT.*does not fit slot A/);
    assert.deepEqual(await device.grubenv(), before);
  });

  test("two os-update runs never write at the same time", async () => {
    // Another live process holds the lock.
    const other = spawn("sleep", ["30"]);
    await writeFile(join(device.root, "run/os-update.lock"), `${other.pid}\n`);
    try {
      const before = await device.grubenv();
      const r = await device.run(["--apply"]);
      assert.equal(r.code, 3);
      assert.match(r.stderr, /LOCKED.*another os-update is in progress \(pid \d+/);
      assert.deepEqual(await device.grubenv(), before);
    } finally {
      other.kill();
      await rm(join(device.root, "run/os-update.lock"), { force: true });
    }
  });
});
