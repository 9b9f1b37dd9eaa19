/**
 * Issue 14, the update server and the host set-up with the original's
 * command lines: `fetch --image PATH` (the original os-update-daemon.sh),
 * os-fetch's timers per image, and scripts/setup.sh waiting for the apt lock.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { chmod, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { syncFetchTimers } from "../../src/io/server/fetch-timers.ts";
import type { ProcessRunner, RunResult } from "../../src/io/process.ts";
import { captureContext } from "../helpers/context.ts";
import { REPO, run, runEos } from "../helpers/run.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";

const result = (stdout = "", code = 0): RunResult => ({
  code,
  signal: null,
  stdout,
  stdoutBytes: Buffer.from(stdout),
  stderr: "",
});

describe("os-update-server with the original's command lines", () => {
  let world: World;
  before(async () => {
    world = await makeWorld();
    await writeServerConfig(world, [
      { image: `${world.origin.url}/EOS.x86_64-AB.raw.xz`, name: "EOS.x86_64-AB.raw" },
      { image: `${world.origin.url}/EOS.x86_64-Other.raw.xz`, name: "EOS.x86_64-Other" },
    ]);
    await releaseImage(world, "EOS.x86_64-AB", "1.0.0");
  });
  after(async () => {
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  });

  test("4: fetch --image PATH --oneshot (os-update-daemon.sh's form) fetches that one image", async () => {
    const path = `/srv/www/fleet/os-images/EOS.x86_64-AB.raw`;
    const r = await runEos("os-update-server", [
      "fetch",
      "--config",
      world.config,
      "--image",
      path,
      "--oneshot",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout.toString(), /^EOS\.x86_64-AB: published 1\.0\.0\n$/);
    assert.ok(existsSync(join(world.imagesDir, "EOS.x86_64-AB.raw")));
    const unknown = await runEos("os-update-server", [
      "fetch",
      "--config",
      world.config,
      "--image",
      "/srv/www/fleet/os-images/Nope.raw",
    ]);
    assert.equal(unknown.code, 3);
    assert.match(unknown.stderr, /no image named \/srv\/www\/fleet\/os-images\/Nope\.raw/);
  });

  test("20: fetch --timers enables one os-update-daemon@NAME.timer per image, disables removed images'", async () => {
    const calls: string[][] = [];
    const proc: ProcessRunner = {
      run: async (argv) => {
        calls.push(argv);
        if (argv[1] === "list-units")
          return result(
            "os-update-daemon@EOS.x86_64-AB.timer loaded active waiting EOS update\n" +
              "os-update-daemon@Retired.timer loaded active waiting EOS update\n",
          );
        return result();
      },
      start: () => {
        throw new Error("not used");
      },
    };
    const c = captureContext({ env: {} });
    c.ctx.proc = proc;
    const sync = await syncFetchTimers(c.ctx, world.config);
    assert.deepEqual(sync, {
      enabled: ["os-update-daemon@EOS.x86_64-AB.timer", "os-update-daemon@EOS.x86_64-Other.timer"],
      disabled: ["os-update-daemon@Retired.timer"],
      failed: [],
    });
    assert.deepEqual(calls.slice(1), [
      ["systemctl", "enable", "--now", "os-update-daemon@EOS.x86_64-AB.timer"],
      ["systemctl", "enable", "--now", "os-update-daemon@EOS.x86_64-Other.timer"],
      ["systemctl", "disable", "--now", "os-update-daemon@Retired.timer"],
    ]);
    const unit = await readFile(join(REPO, "systemd", "os-fetch.service"), "utf8");
    assert.match(unit, /^ExecStart=\/usr\/bin\/os-update-server fetch --oneshot --timers$/m);
    assert.match(unit, /^ReadWritePaths=\/etc\/systemd\/system$/m, "systemctl enable writes there");
  });
});

test("21: scripts/setup.sh waits for another apt/dpkg run's lock and says so", async () => {
  const dir = join(REPO, ".tmp", `setup-test-${process.pid}`);
  const bin = join(dir, "bin");
  await mkdir(bin, { recursive: true });
  const log = join(dir, "calls");
  const fake = async (name: string, body: string) => {
    await writeFile(join(bin, name), `#!/bin/sh\n${body}\n`);
    await chmod(join(bin, name), 0o755);
  };
  try {
    await fake("dpkg-query", "exit 1"); // every package missing
    await fake("apt-get", `echo "apt-get $*" >> "${log}"`);
    await fake("sudo", `exec "$@"`);
    await fake("npm", `echo "npm $*" >> "${log}"`);
    const r = await run("bash", [join(REPO, "scripts", "setup.sh")], {
      env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ""}` },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout.toString(), /another apt\/dpkg run holds the lock, waiting up to 600s/);
    const apt = (await readFile(log, "utf8")).split("\n").filter((l) => l.startsWith("apt-get"));
    assert.equal(apt.length, 2);
    for (const line of apt) assert.match(line, /^apt-get -o DPkg::Lock::Timeout=600 (update|install) /);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
