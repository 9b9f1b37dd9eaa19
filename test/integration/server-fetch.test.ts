import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { copyFile, readFile, readdir, readlink, rm, writeFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { createHash } from "node:crypto";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { DIST, runEos } from "../helpers/run.ts";
import { partitionBytes, zstdFile, flipByte } from "../helpers/sample-image.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";
import { decodeManifest, encodeManifest, encodeSignatures, signManifest } from "../../src/core/manifest.ts";
import { loadPrivateKey } from "../../src/io/keys.ts";

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

describe("os-update-server fetch", () => {
  let world: World;
  const name = "EOS.x86_64-AB";
  const fetch = (...extra: string[]) =>
    runEos("os-update-server", ["fetch", "--config", world.config, ...extra]);
  const published = async () =>
    JSON.parse(await readFile(join(world.imagesDir, `${name}.manifest.json`), "utf8")) as {
      version: string;
      partitions: { root: { sha256: string } };
    };
  const noStaging = async () => {
    const entries = await readdir(join(world.imagesDir, ".versions", name));
    assert.deepEqual(
      entries.filter((e) => e.startsWith(".staging-")),
      [],
      "temporary files removed",
    );
  };

  before(async () => {
    world = await makeWorld();
    await writeServerConfig(world, [{ image: `${world.origin.url}/${name}.raw.xz`, name: `${name}.raw` }]);
  });
  after(async () => {
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  });

  test("publishes a signed xz image: raw, manifest, signature and .raw.sha", async () => {
    const raw = await releaseImage(world, name, "1.0.0");
    const r = await fetch();
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout.toString(), /EOS.x86_64-AB: published 1.0.0/);
    const publishedRaw = await readFile(join(world.imagesDir, `${name}.raw`));
    assert.ok(publishedRaw.equals(await readFile(raw)), "published raw is the decompressed image");
    assert.deepEqual(
      await readFile(join(world.imagesDir, `${name}.manifest.json`)),
      await readFile(`${raw}.manifest.json`),
    );
    assert.ok((await stat(join(world.imagesDir, `${name}.manifest.json.sig`))).size > 0);
    assert.equal(
      (await readFile(join(world.imagesDir, `${name}.raw.sha`), "utf8")).trim(),
      `${sha256(publishedRaw)}  ${name}.raw`,
    );
    assert.equal((await published()).version, "1.0.0");
    await noStaging();
  });

  test("an unchanged origin costs exactly one request", async () => {
    world.origin.requests.length = 0;
    const r = await fetch();
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout.toString(), /unchanged/);
    assert.deepEqual(world.origin.requests, [`GET /${name}.raw.manifest.json`]);
  });

  test("a new zstd release at the origin is published; the old one is kept beside it", async () => {
    const raw = await releaseImage(world, name, "2.0.0", {
      compress: zstdFile,
      payloadBytes: 12 * 1024 * 1024,
    });
    await writeServerConfig(world, [{ image: `${world.origin.url}/${name}.raw.zst`, name }]);
    const r = await fetch("--json");
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout.toString()), [{ name, status: "published", version: "2.0.0" }]);
    assert.ok((await readFile(join(world.imagesDir, `${name}.raw`))).equals(await readFile(raw)));
    assert.equal((await readdir(join(world.imagesDir, ".versions", name))).length, 2, "current + previous");
  });

  const refusals: Array<[string, (w: World) => Promise<void>, RegExp]> = [
    [
      "a manifest signed by an unknown key",
      async (w) => {
        await releaseImage(w, name, "3.0.0", {
          key: join(w.otherKeysDir, "release.key"),
          compress: zstdFile,
        });
      },
      /not signed by a trusted key/,
    ],
    [
      "a manifest altered after signing",
      async (w) => {
        await releaseImage(w, name, "3.0.0", { compress: zstdFile });
        const path = join(w.originDir, `${name}.raw.manifest.json`);
        await writeFile(
          path,
          (await readFile(path, "utf8")).replace('"version":"3.0.0"', '"version":"9.0.0"'),
        );
      },
      /does not verify/,
    ],
    [
      "an image whose root differs from its signed manifest",
      async (w) => {
        const raw = await releaseImage(w, name, "3.0.0", {
          compress: zstdFile,
          payloadBytes: 12 * 1024 * 1024,
        });
        await flipByte(raw, 2048 * 512 + 8 * 1024 * 1024 + 11 * 1024 * 1024); // inside the root, past 10 MB
        await copyFile(await zstdFile(raw), join(w.originDir, `${name}.raw.zst`));
      },
      /root partition does not match the signed manifest/,
    ],
    [
      "a signed manifest that says zeros where the image has data (every full update would fail)",
      async (w) => {
        await releaseImage(w, name, "3.0.0", { compress: zstdFile, payloadBytes: 12 * 1024 * 1024 });
        const path = join(w.originDir, `${name}.raw.manifest.json`);
        const manifest = decodeManifest(await readFile(path));
        manifest.partitions.root.data_bytes = 4096;
        const bytes = encodeManifest(manifest);
        const key = await loadPrivateKey(join(w.keysDir, "release.key"));
        await writeFile(path, bytes);
        await writeFile(`${path}.sig`, encodeSignatures(signManifest(bytes, [key])));
      },
      /root partition does not match the signed manifest/,
    ],
    [
      "a truncated download",
      async (w) => {
        await releaseImage(w, name, "3.0.0", { compress: zstdFile });
        w.origin.faults.set(`/${name}.raw.zst`, "truncate");
      },
      /TRUNCATED|zstd/,
    ],
    [
      "a corrupt compressed stream",
      async (w) => {
        await releaseImage(w, name, "3.0.0", { compress: zstdFile });
        const path = join(w.originDir, `${name}.raw.zst`);
        const bytes = await readFile(path);
        bytes.fill(0x41, 100, 400);
        await writeFile(path, bytes);
      },
      /zstd/,
    ],
    [
      "a missing image (404)",
      async (w) => {
        await releaseImage(w, name, "3.0.0", { compress: zstdFile });
        w.origin.faults.set(`/${name}.raw.zst`, "404");
      },
      /HTTP 404/,
    ],
    [
      "an image without a GPT",
      async (w) => {
        await releaseImage(w, name, "3.0.0", { compress: zstdFile });
        const junk = join(w.dir, "junk.raw");
        await writeFile(junk, Buffer.alloc(4 * 1024 * 1024, 7));
        await copyFile(await zstdFile(junk), join(w.originDir, `${name}.raw.zst`));
      },
      /no valid GPT/,
    ],
  ];

  for (const [what, arrange, expected] of refusals) {
    test(`refuses ${what}: the previous version stays published, exit 1, no temp files`, async () => {
      const before = await published();
      world.origin.faults.clear();
      await arrange(world);
      const r = await fetch();
      world.origin.faults.clear();
      assert.equal(r.code, 1, r.stdout.toString());
      assert.match(r.stdout.toString(), /EOS.x86_64-AB: failed/);
      assert.match(r.stderr, expected);
      assert.match(r.stderr, /"image":"EOS.x86_64-AB"/, "the log names the image");
      assert.deepEqual(await published(), before);
      await noStaging();
    });
  }

  test("an unreachable origin is reported and nothing changes", async () => {
    const before = await published();
    await writeServerConfig(world, [{ image: "http://127.0.0.1:9/nothing.raw.xz", name }]);
    const r = await fetch();
    assert.equal(r.code, 1);
    assert.match(r.stderr, /NETWORK/);
    assert.deepEqual(await published(), before);
    await writeServerConfig(world, [{ image: `${world.origin.url}/${name}.raw.zst`, name }]);
  });

  test("unsigned images are published only with insecure: true", async () => {
    const other = "Unsigned";
    await releaseImage(world, other, "1");
    await rm(join(world.originDir, `${other}.raw.manifest.json`));
    await writeServerConfig(world, [{ image: `${world.origin.url}/${other}.raw.xz`, name: other }]);
    const refused = await fetch();
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /HTTP 404/);
    await writeServerConfig(world, [
      { image: `${world.origin.url}/${other}.raw.xz`, name: other, insecure: true },
    ]);
    const r = await fetch();
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /unsigned/);
    const manifest = JSON.parse(await readFile(join(world.imagesDir, `${other}.manifest.json`), "utf8")) as {
      partitions: { root: { sha256: string } };
    };
    assert.equal(
      manifest.partitions.root.sha256,
      sha256(await partitionBytes(join(world.imagesDir, `${other}.raw`), "p.lxreadonly")),
    );
    await assert.rejects(stat(join(world.imagesDir, `${other}.manifest.json.sig`)));
    world.origin.requests.length = 0;
    assert.equal((await fetch()).code, 0);
    assert.deepEqual(world.origin.requests, [`GET /${other}.raw.xz`], "conditional GET on the image itself");
    await writeServerConfig(world, [{ image: `${world.origin.url}/${name}.raw.zst`, name }]);
  });

  test("published names are links into one immutable version directory", async () => {
    const target = await readlink(join(world.imagesDir, `${name}.manifest.json`));
    const dir = target.split("/").slice(0, -1).join("/");
    for (const suffix of [".raw", ".raw.sha", ".manifest.json.sig"]) {
      assert.equal(await readlink(join(world.imagesDir, `${name}${suffix}`)), `${dir}/${name}${suffix}`);
    }
  });
});

describe("os-update-server fetch: configuration errors name the file and key", () => {
  let world: World;
  before(async () => (world = await makeWorld()));
  after(async () => {
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  });
  const cases: Array<[string, string, RegExp]> = [
    ["missing update list", "images_dir: /x\n", /update: /],
    [
      "image that is not a URL",
      "update:\n  - image: /tmp/x.raw.xz\n    name: x\n",
      /update\[0\]\.image: must be an http/,
    ],
    [
      "name with a path",
      "update:\n  - image: http://x/a.raw.xz\n    name: ../../etc/passwd\n",
      /update\[0\]\.name: must be letters/,
    ],
    [
      "unknown key",
      "update:\n  - image: http://x/a.raw.xz\n    name: a\n    colour: red\n",
      /unknown key update\[0\]\.colour/,
    ],
    [
      "bad interval",
      "update:\n  - image: http://x/a.raw.xz\n    name: a\n    interval: soon\n",
      /update\[0\]\.interval: cannot read "soon"/,
    ],
    ["invalid YAML", "update: [\n", /invalid YAML/],
  ];
  for (const [what, text, expected] of cases) {
    test(what, async () => {
      await writeFile(world.config, text);
      const r = await runEos("os-update-server", ["fetch", "--config", world.config]);
      assert.equal(r.code, 3);
      assert.ok(r.stderr.includes(world.config), r.stderr);
      assert.match(r.stderr, expected);
    });
  }
  test("a missing config file", async () => {
    const r = await runEos("os-update-server", ["fetch", "--config", join(world.dir, "nope.yml")]);
    assert.equal(r.code, 3);
    assert.match(r.stderr, /nope\.yml: cannot read/);
  });
});

describe("os-update-server fetch --daemon", () => {
  test("fetches each image at its interval until stopped, and exits 0 on SIGTERM", async () => {
    const world = await makeWorld();
    const name = "EOS.daemon";
    try {
      await writeServerConfig(world, [{ image: `${world.origin.url}/${name}.raw.xz`, name, interval: "1s" }]);
      await releaseImage(world, name, "1");
      const daemon = spawn(
        process.execPath,
        [join(DIST, "os-update-server.mjs"), "fetch", "--daemon", "--config", world.config],
        {
          stdio: ["ignore", "ignore", "pipe"],
        },
      );
      let log = "";
      daemon.stderr.setEncoding("utf8").on("data", (s: string) => (log += s));
      const publishedVersion = async () =>
        (
          JSON.parse(
            await readFile(join(world.imagesDir, `${name}.manifest.json`), "utf8").catch(() => "{}"),
          ) as { version?: string }
        ).version;
      const waitFor = async (version: string) => {
        for (let i = 0; i < 100 && (await publishedVersion()) !== version; i++)
          await new Promise((r) => setTimeout(r, 100));
        assert.equal(await publishedVersion(), version, log);
      };
      await waitFor("1");
      await releaseImage(world, name, "2");
      await waitFor("2");
      const requestsBefore = world.origin.requests.length;
      await new Promise((r) => setTimeout(r, 2500));
      assert.ok(world.origin.requests.length > requestsBefore, "it keeps polling");
      assert.ok(
        world.origin.requests.slice(requestsBefore).every((r) => r.endsWith(".manifest.json")),
        "an unchanged origin costs one manifest request per interval",
      );
      daemon.kill("SIGTERM");
      const [code] = (await once(daemon, "exit")) as [number];
      assert.equal(code, 0);
      assert.match(log, /fetch daemon stopped/);
    } finally {
      await world.origin.close();
      await rm(world.dir, { recursive: true, force: true });
    }
  });
});
