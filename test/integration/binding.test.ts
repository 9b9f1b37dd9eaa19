/**
 * A signed manifest is bound to the image it is installed as (issue 11,
 * finding 1): the server refuses to publish another image's manifest under a
 * name, and a device refuses a manifest for another image, another
 * architecture or a version that is not newer, before it writes a byte.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { copyFile, open, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { runEos } from "../helpers/run.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";
import { makeDevice, type TestDevice } from "../helpers/device.ts";
import { hostileServer } from "../helpers/hostile-server.ts";

const NAME = "EOS.x86_64-AB";

interface Manifest {
  version: string;
  partitions: { root: { sha256: string; size: number } };
}

async function published(world: World, name: string): Promise<Manifest | undefined> {
  const text = await readFile(join(world.imagesDir, `${name}.manifest.json`), "utf8").catch(() => undefined);
  return text === undefined ? undefined : (JSON.parse(text) as Manifest);
}

describe("the server publishes a manifest only under its own image's name", () => {
  let world: World;
  before(async () => {
    world = await makeWorld();
  });
  after(async () => {
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  });

  test("a manifest of image OTHER (aarch64) configured as SWAPPED is refused; nothing is published", async () => {
    await writeServerConfig(world, [{ image: `${world.origin.url}/SWAPPED.raw.xz`, name: "SWAPPED" }]);
    await releaseImage(world, "SWAPPED", "1.0.0", { manifestName: "OTHER", arch: "aarch64" });
    const r = await runEos("os-update-server", ["fetch", "--config", world.config]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /"image":"SWAPPED".*REFUSED.*for image OTHER/);
    assert.equal(await published(world, "SWAPPED"), undefined);
  });

  test("a name that says aarch64 refuses an x86_64 manifest; a channel suffix is fine", async () => {
    const arm = "EOS.aarch64-RPI-TW";
    await writeServerConfig(world, [
      { image: `${world.origin.url}/${arm}.raw.xz`, name: arm },
      { image: `${world.origin.url}/${NAME}-TW.raw.xz`, name: `${NAME}-TW` },
    ]);
    await releaseImage(world, arm, "1.0.0", { manifestName: "EOS.aarch64-RPI", arch: "x86_64" });
    await releaseImage(world, `${NAME}-TW`, "1.0.0", { manifestName: NAME, arch: "x86_64" });
    const r = await runEos("os-update-server", ["fetch", "--config", world.config]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /the name says aarch64, but the signed manifest is built for x86_64/);
    assert.equal(await published(world, arm), undefined);
    assert.equal(
      (await published(world, `${NAME}-TW`))?.version,
      "1.0.0",
      "one image's refusal spares the other",
    );
  });
});

async function sha256Of(path: string, offset: number, length: number): Promise<string> {
  const fh = await open(path, "r");
  try {
    const buf = Buffer.alloc(length);
    await fh.read(buf, 0, length, offset);
    return createHash("sha256").update(buf).digest("hex");
  } finally {
    await fh.close();
  }
}

describe("a device refuses a signed manifest that is not for it, before writing a byte", () => {
  let world: World;
  let device: TestDevice;
  let v1: Manifest;
  const releases = new Map<string, { manifest: Buffer; sig: Buffer; raw: string }>();

  before(async () => {
    world = await makeWorld();
    const v1Raw = await releaseImage(world, NAME, "1.0.0", { payloadBytes: 2 * 1024 * 1024 });
    v1 = JSON.parse(await readFile(`${v1Raw}.manifest.json`, "utf8")) as Manifest;
    await copyFile(v1Raw, join(world.dir, "device-v1.raw"));
    const cases: Array<[string, string, { manifestName?: string; arch?: string }]> = [
      ["other-image", "2.0.0", { manifestName: "OTHER" }],
      ["other-arch", "2.0.0", { arch: "aarch64" }],
      ["same-version", "1.0.0", {}],
      ["good", "2.0.0", {}],
    ];
    for (const [key, version, options] of cases) {
      // Different payloads, so that every release has other root bytes than v1.
      const raw = await releaseImage(world, NAME, version, {
        ...options,
        payloadBytes: 2 * 1024 * 1024 + 4096,
      });
      const copy = join(world.dir, `${key}.raw`);
      await copyFile(raw, copy);
      releases.set(key, {
        manifest: await readFile(`${raw}.manifest.json`),
        sig: await readFile(`${raw}.manifest.json.sig`),
        raw: copy,
      });
    }
    device = await makeDevice(join(world.dir, "device-v1.raw"), v1, {
      config: `update:\n  name: ${NAME}\n  url: http://127.0.0.1:1\n`,
      keys: [join(world.keysDir, "release.pub")],
    });
  });
  after(async () => {
    await device?.close();
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  });

  async function offer(key: string) {
    const r = releases.get(key);
    assert.ok(r);
    const base = `/v1/images/${NAME}`;
    return hostileServer(
      new Map([
        [`${base}/manifest.json`, r.manifest],
        [`${base}/manifest.json.sig`, r.sig],
        [`${base}/root`, await readFile(r.raw)],
      ]),
    );
  }

  for (const [key, expected] of [
    ["other-image", /REFUSED.*for image OTHER, but this device runs EOS\.x86_64-AB/],
    ["other-arch", /REFUSED.*built for aarch64, this device is x86_64/],
    ["same-version", /DOWNGRADE.*not newer than the running 1\.0\.0/],
  ] as const) {
    test(`${key}: --check and --apply refuse; slot B, the boot control block and the running slot stay as they were`, async () => {
      const hostile = await offer(key);
      try {
        const { writeFile } = await import("node:fs/promises");
        await writeFile(
          join(device.root, "etc/os-update.yml"),
          `update:\n  name: ${NAME}\n  url: ${hostile.url}\n  keys: [${join(world.keysDir, "release.pub")}]\n`,
        );
        const slotB = { offset: 0, length: 0 };
        const { readGpt, requirePartition, partitionRange } = await import("../../src/core/gpt.ts");
        const { openBlockSource } = await import("../../src/io/files.ts");
        const src = await openBlockSource(device.image);
        const { table } = await readGpt(src);
        await src.close();
        Object.assign(slotB, partitionRange(table, requirePartition(table, "p.lxrootclone1")));
        const before = {
          env: await device.grubenv(),
          slotB: await sha256Of(device.image, slotB.offset, slotB.length),
        };
        const check = await device.run(["--check"]);
        if (key === "same-version") {
          assert.equal(check.code, 0, "not an update");
          assert.match(check.stdout, /not newer than the running 1\.0\.0: not an update/);
        } else {
          assert.equal(check.code, 3, check.stdout);
          assert.match(check.stderr, expected);
        }
        const apply = await device.run(["--apply"]);
        assert.equal(apply.code, 3, apply.stdout);
        assert.match(apply.stderr, expected);
        assert.deepEqual(await device.grubenv(), before.env, "boot control unchanged");
        assert.equal(
          await sha256Of(device.image, slotB.offset, slotB.length),
          before.slotB,
          "slot B untouched",
        );
        assert.equal(device.calls.length, 0, "no kexec, no reboot");
        assert.ok(
          !hostile.requests.some((u) => u.endsWith("/root")),
          `no root bytes fetched: ${hostile.requests.join(", ")}`,
        );
      } finally {
        await hostile.close();
      }
    });
  }

  test("the same server with a manifest that is for this device: --check offers it", async () => {
    const hostile = await offer("good");
    try {
      const { writeFile } = await import("node:fs/promises");
      await writeFile(
        join(device.root, "etc/os-update.yml"),
        `update:\n  name: ${NAME}\n  url: ${hostile.url}\n  keys: [${join(world.keysDir, "release.pub")}]\n`,
      );
      const check = await device.run(["--check"]);
      assert.equal(check.code, 1, check.stderr);
      assert.match(check.stdout, /update available: 1\.0\.0 → 2\.0\.0/);
    } finally {
      await hostile.close();
    }
  });
});
