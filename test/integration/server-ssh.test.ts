import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { rm, readFile } from "node:fs/promises";
import { join } from "node:path";
import { DIST, runEos } from "../helpers/run.ts";
import { partitionBytes } from "../helpers/sample-image.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";
import { startSshd, type Sshd } from "../helpers/sshd.ts";

describe("os-update-server restricted behind a real sshd", () => {
  let world: World;
  let sshd: Sshd;
  const name = "EOS.x86_64-AB-TW";
  const other = "Other";

  before(async () => {
    world = await makeWorld();
    await writeServerConfig(world, [
      { image: `${world.origin.url}/${name}.raw.xz`, name: `${name}.raw` },
      { image: `${world.origin.url}/${other}.raw.xz`, name: other },
    ]);
    await releaseImage(world, name, "1.0.0", { payloadBytes: 12 * 1024 * 1024 });
    await releaseImage(world, other, "1.0.0");
    const r = await runEos("os-update-server", ["fetch", "--config", world.config]);
    assert.equal(r.code, 0, r.stderr);
    sshd = await startSshd(join(world.dir, "ssh"), [
      process.execPath,
      join(DIST, "os-update-server.mjs"),
      "restricted",
      "--images-dir",
      world.imagesDir,
    ]);
  });
  after(async () => {
    sshd?.stop();
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  });

  test("the original client's root read returns exactly the root partition", async () => {
    const r = await sshd.ssh(`sudo cat /srv/www/fleet/os-images/${name}.raw.dev`);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.equals(await partitionBytes(join(world.imagesDir, `${name}.raw`), "p.lxreadonly")));
  });

  test("the configured image directory works as well as the original path; firmware and manifest too", async () => {
    const fw = await sshd.ssh(`cat ${world.imagesDir}/${name}.raw.firmware`);
    assert.equal(fw.code, 0, fw.stderr);
    assert.ok(fw.stdout.equals(await partitionBytes(join(world.imagesDir, `${name}.raw`), "p.UEFI")));
    const manifest = await sshd.ssh(`eos-read ${name} manifest`);
    assert.ok(manifest.stdout.equals(await readFile(join(world.imagesDir, `${name}.manifest.json`))));
  });

  test("eos-read resumes from an offset", async () => {
    const root = await partitionBytes(join(world.imagesDir, `${name}.raw`), "p.lxreadonly");
    const r = await sshd.ssh(`eos-read ${name} root 10000000`);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.equals(root.subarray(10_000_000)));
  });

  test("eos-read NAME chunks sends the chunk index the signed manifest names; refused for an unpublished image", async () => {
    const manifest = JSON.parse(await readFile(join(world.imagesDir, `${name}.manifest.json`), "utf8")) as {
      partitions: { root: { chunk_index: { size: number; sha256: string } } };
    };
    const r = await sshd.ssh(`eos-read ${name} chunks`);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      createHash("sha256").update(r.stdout).digest("hex"),
      manifest.partitions.root.chunk_index.sha256,
    );
    const missing = await sshd.ssh("eos-read Missing chunks");
    assert.equal(missing.code, 1);
    assert.equal(missing.stdout.length, 0);
    assert.match(missing.stderr, /refused: image Missing is not published/);
  });

  test("test -e tells published from unpublished images", async () => {
    assert.equal((await sshd.ssh(`test -e /srv/www/fleet/os-images/${name}.raw`)).code, 0);
    assert.equal((await sshd.ssh(`test -e /srv/www/fleet/os-images/Missing.raw`)).code, 1);
  });

  const hostile = [
    "",
    "sudo cat /etc/shadow",
    "cat /etc/passwd",
    `cat /srv/www/fleet/os-images/../../../../etc/shadow`,
    `sudo cat /srv/www/fleet/os-images/${name}.raw.dev; cat /etc/shadow`,
    `sudo cat /srv/www/fleet/os-images/$(cat /etc/shadow).raw.dev`,
    `sudo cat /srv/www/fleet/os-images/${name}.raw.dev && id`,
    `sudo cat /srv/www/fleet/os-images/${name}.raw.dev | nc 127.0.0.1 9`,
    `cat /srv/www/fleet/os-images/.state/${name}.json`,
    `cat /srv/www/fleet/os-images/.versions/${name}`,
    "sudo cat /srv/www/fleet/os-images/Missing.raw.dev",
    "bash -i",
    "sudo -s",
    "scp -t /tmp",
    `cat /srv/www/fleet/os-images/${"x".repeat(5000)}.raw.dev`,
  ];
  test("hostile commands are refused with a message and exit 1, and read nothing", async () => {
    for (const command of hostile) {
      const r = await sshd.ssh(command);
      assert.equal(r.code, 1, `${JSON.stringify(command.slice(0, 80))} → exit ${r.code}`);
      assert.equal(r.stdout.length, 0, `${command.slice(0, 80)} printed nothing`);
      assert.match(r.stderr, /refused/);
    }
  });

  test("another published image is readable only by its own name", async () => {
    const r = await sshd.ssh(`eos-read ${other} root`);
    assert.equal(r.code, 0);
    assert.ok(r.stdout.equals(await partitionBytes(join(world.imagesDir, `${other}.raw`), "p.lxreadonly")));
  });
});
