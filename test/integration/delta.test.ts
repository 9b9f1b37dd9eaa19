/**
 * Pair deltas end to end: the real server makes them when it publishes v2
 * while v1 is kept, a device running v1 takes the delta over HTTPS and over
 * SSH and ends with a slot that matches the signed manifest; a broken or
 * missing delta, or a running slot that no longer matches its record, fall
 * back to the chunk path (the full stream only when no chunk index is
 * published); a running root the server has no delta for takes the chunk path.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { copyFile, open, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { runEos } from "../helpers/run.ts";
import { partitionBytes } from "../helpers/sample-image.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";
import { makeDevice, type TestDevice } from "../helpers/device.ts";
import { startUpdateServers, type LoggedRequest, type UpdateServers } from "../helpers/update-servers.ts";
import { partitionRange, readGpt, requirePartition, type ByteRange } from "../../src/core/gpt.ts";
import { openBlockSource } from "../../src/io/files.ts";

const NAME = "EOS.x86_64-AB";
const MiB = 1024 * 1024;
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

interface Manifest {
  version: string;
  partitions: {
    root: { sha256: string; size: number; data_bytes?: number };
    firmware?: { size: number; data_bytes?: number };
  };
}

async function manifestOf(raw: string): Promise<Manifest> {
  return JSON.parse(await readFile(`${raw}.manifest.json`, "utf8")) as Manifest;
}

describe("delta updates: pair deltas made by the server, taken by the device", () => {
  let world: World;
  let servers: UpdateServers;
  let token: string;
  let v1Manifest: Manifest;
  let v2Manifest: Manifest;
  let deltaFile: string;
  let chunksFile: string;
  let requests: LoggedRequest[] = [];

  before(async () => {
    world = await makeWorld();
    await writeServerConfig(world, [{ image: `${world.origin.url}/${NAME}.raw.xz`, name: NAME }]);
    // v1 and v2 share their payload (the same seed): v2 changes a few small files, as a package would.
    // The slots (80 MiB) are larger than xdelta3's window, as real ones are: the device reads its
    // old root from a block device, which the decoder cannot seek back in beyond its window.
    const v1 = await releaseImage(world, NAME, "1.0.0", {
      payloadBytes: 12 * MiB,
      rootSizeMiB: 80,
      seed: "base",
      verity: true,
    });
    v1Manifest = await manifestOf(v1);
    await copyFile(v1, join(world.dir, "device-v1.raw"));
    assert.equal((await runEos("os-update-server", ["fetch", "--config", world.config])).code, 0);
    const v2 = await releaseImage(world, NAME, "2.0.0", {
      payloadBytes: 12 * MiB,
      rootSizeMiB: 80,
      seed: "base",
      verity: true,
    });
    v2Manifest = await manifestOf(v2);
    const fetched = await runEos("os-update-server", ["fetch", "--config", world.config]);
    assert.equal(fetched.code, 0, fetched.stderr);
    assert.match(fetched.stdout + fetched.stderr, /delta made/);
    const versions = join(world.imagesDir, ".versions", NAME);
    const current = (await readdir(versions)).find((v) => v.startsWith("2.0.0-")) as string;
    deltaFile = join(versions, current, "deltas", `${v1Manifest.partitions.root.sha256}.xd3`);
    chunksFile = join(versions, current, `${NAME}.chunks`);

    servers = await startUpdateServers(world);
    ({ token, requests } = servers);
  });

  after(async () => {
    servers?.stop();
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  });

  const httpsConfig = () => servers.httpsConfig(NAME);
  const sshConfig = () => servers.sshConfig(NAME);

  async function deviceOnV1(config: string, image = "device-v1.raw"): Promise<TestDevice> {
    const copy = join(world.dir, `device-${Math.random().toString(36).slice(2)}.raw`);
    await copyFile(join(world.dir, image), copy);
    return makeDevice(copy, v1Manifest, {
      config,
      keys: [join(world.keysDir, "release.pub")],
      token,
    });
  }

  async function slotBMatchesV2(device: TestDevice): Promise<void> {
    const slotB = await partitionBytes(device.image, "p.lxrootclone1");
    assert.equal(
      sha256(slotB.subarray(0, v2Manifest.partitions.root.size)),
      v2Manifest.partitions.root.sha256,
    );
    const env = await device.grubenv();
    assert.equal(env.get("eos_trial"), "B");
    assert.equal(env.get("eos_B_sha256"), v2Manifest.partitions.root.sha256);
  }

  test("the server lists the delta; its size is a fraction of the root", async () => {
    const index = JSON.parse(
      (await readFile(join(deltaFile, "..", "..", `${NAME}.deltas.json`), "utf8")) as string,
    ) as { to_sha256: string; deltas: Array<{ from_sha256: string; size: number; algorithm: string }> };
    assert.equal(index.to_sha256, v2Manifest.partitions.root.sha256);
    assert.equal(index.deltas.length, 1);
    assert.equal(index.deltas[0]?.from_sha256, v1Manifest.partitions.root.sha256);
    // Both roots carry a dm-verity tree (as eos build makes them): the delta leaves the tree out,
    // the device computes it (test/integration/verity.test.ts checks that against veritysetup).
    assert.equal(index.deltas[0]?.algorithm, "xdelta3-verity");
    assert.ok((index.deltas[0]?.size ?? Infinity) < v2Manifest.partitions.root.size / 20);
  });

  test("https: --check --json names the delta path; --apply downloads the delta, not the root", async () => {
    const device = await deviceOnV1(httpsConfig());
    try {
      const check = await device.run(["--check", "--json"]);
      assert.equal(check.code, 1, check.stderr);
      const download = JSON.parse(check.stdout).download;
      assert.equal(download.path, "delta");
      assert.equal(download.from_version, "1.0.0");
      assert.ok(download.bytes < download.full_bytes / 20, JSON.stringify(download));
      const full = JSON.parse((await device.run(["--check", "--json", "--no-delta"])).stdout).download;
      assert.deepEqual([full.path, full.reason], ["full", "asked for (--no-delta)"]);
      requests.length = 0;
      const apply = await device.run(["--apply"]);
      assert.equal(apply.code, 0, apply.stderr);
      assert.match(apply.stdout, new RegExp(`from ${download.bytes} bytes downloaded \\(delta\\)`));
      // Not a terminal: plain progress lines for the decode too, the last one at the whole file system.
      const decodeLines = apply.stderr.split("\n").filter((l) => l.startsWith("slot B (delta decode): "));
      assert.ok(decodeLines.length > 0, apply.stderr);
      assert.ok(!apply.stderr.includes("\r"), "no redrawn lines when stderr is not a terminal");
      const [, done, of] =
        / (\S+ \S+) of (\S+ \S+) 100\.0% \S+ \S+\/s/.exec(decodeLines.at(-1) as string) ?? [];
      assert.ok(done && done === of, decodeLines.join("\n"));
      await slotBMatchesV2(device);
      assert.ok(requests.some((r) => r.path.endsWith(`/deltas/${v1Manifest.partitions.root.sha256}`)));
      assert.ok(!requests.some((r) => r.path.endsWith("/root")), "the root stream was not requested");
    } finally {
      await device.close();
    }
  });

  test("ssh: the forced command serves the index and the delta", async () => {
    const device = await deviceOnV1(sshConfig());
    try {
      const apply = await device.run(["--apply"]);
      assert.equal(apply.code, 0, apply.stderr);
      assert.match(apply.stdout, /bytes downloaded \(delta\)/);
      await slotBMatchesV2(device);
    } finally {
      await device.close();
    }
  });

  test("the root and firmware streams carry their data, not the zero tail (https and ssh)", async () => {
    const { size, data_bytes: dataBytes } = v2Manifest.partitions.root;
    assert.ok(dataBytes !== undefined && dataBytes < size / 2, `data_bytes ${dataBytes} of ${size}`);
    const https = await deviceOnV1(httpsConfig());
    try {
      requests.length = 0;
      const apply = await https.run(["--apply", "--no-delta"]);
      assert.equal(apply.code, 0, apply.stderr);
      assert.match(apply.stdout, new RegExp(`from ${dataBytes} bytes downloaded \\(full\\)`));
      await slotBMatchesV2(https);
      const served = requests.filter((r) => r.path.endsWith("/root")).reduce((n, r) => n + r.bytes, 0);
      assert.equal(served, dataBytes, "bytes of the root stream the server sent");
      console.log(`full stream: ${served} bytes on the wire for a ${size}-byte slot`);
      // The firmware stream too: the ESP's zero tail stays on the server.
      const firmware = v2Manifest.partitions.firmware;
      assert.ok(firmware?.data_bytes !== undefined && firmware.data_bytes < firmware.size / 2);
      requests.length = 0;
      const fw = await https.run(["--firmware"]);
      assert.equal(fw.code, 0, fw.stderr);
      assert.equal(await readFile(join(https.esp, "fw.txt"), "utf8"), "firmware for 2.0.0\n");
      const fwServed = requests.filter((r) => r.path.endsWith("/firmware")).reduce((n, r) => n + r.bytes, 0);
      assert.equal(fwServed, firmware.data_bytes, "bytes of the firmware stream the server sent");
    } finally {
      await https.close();
    }
    const ssh = await deviceOnV1(sshConfig());
    try {
      const apply = await ssh.run(["--apply", "--no-delta"]);
      assert.equal(apply.code, 0, apply.stderr);
      assert.match(apply.stdout, new RegExp(`from ${dataBytes} bytes downloaded \\(full\\)`));
      await slotBMatchesV2(ssh);
      const fw = await ssh.run(["--firmware"]);
      assert.equal(fw.code, 0, fw.stderr);
      assert.equal(await readFile(join(ssh.esp, "fw.txt"), "utf8"), "firmware for 2.0.0\n");
    } finally {
      await ssh.close();
    }
    // What the forced command sends for such a request: the data, nothing after it.
    const read = (command: string) =>
      runEos("os-update-server", ["restricted", "--images-dir", world.imagesDir], {
        env: { ...process.env, SSH_ORIGINAL_COMMAND: command },
      });
    const head = await read(`eos-read ${NAME} root 4096 ${dataBytes}`);
    assert.equal(head.code, 0, head.stderr);
    assert.equal(head.stdout.length, dataBytes - 4096);
    const refused = await read(`eos-read ${NAME} manifest 0 10`);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /END is only for the root and firmware streams/);
  });

  /** The chunk path was taken, as the server saw it: the index and a few ranges of the root, not the stream. */
  function chunkPathServed(apply: { stdout: string }): void {
    assert.match(apply.stdout, /bytes downloaded \(chunks\)/);
    assert.ok(
      requests.some((r) => r.path.endsWith(`/${NAME}/chunks`) && r.status === 200),
      "index fetched",
    );
    const root = requests.filter((r) => r.path.endsWith("/root"));
    assert.ok(root.length > 0, "ranges of the root fetched");
    assert.ok(
      root.every((r) => r.status === 206),
      `only ranges: ${JSON.stringify(root.map((r) => r.status))}`,
    );
    const served = root.reduce((n, r) => n + r.bytes, 0);
    const full = v2Manifest.partitions.root.data_bytes as number;
    assert.ok(served < full / 4, `${served} bytes of the root served, the full stream is ${full}`);
    const planned = /taking the chunk path: (\d+) bytes of the root/.exec(apply.stdout);
    assert.equal(served, Number(planned?.[1]), "exactly the planned ranges");
  }

  /** Runs `fn` with `file` replaced by `bytes` (or removed), and puts it back. */
  async function withFile<T>(file: string, bytes: Buffer | undefined, fn: () => Promise<T>): Promise<T> {
    const good = await readFile(file);
    await (bytes ? writeFile(file, bytes) : rm(file));
    try {
      return await fn();
    } finally {
      await writeFile(file, good);
    }
  }

  test("a delta whose bytes do not match the index: refused before decoding, the chunk path is taken", async () => {
    const bad = await readFile(deltaFile);
    bad[bad.length - 1] = (bad[bad.length - 1] as number) ^ 0xff;
    const device = await deviceOnV1(httpsConfig());
    try {
      await withFile(deltaFile, bad, async () => {
        requests.length = 0;
        const apply = await device.run(["--apply"]);
        assert.equal(apply.code, 0, apply.stderr);
        assert.match(
          apply.stdout,
          /the delta path failed \(the delta has .* sha256 .*\); taking the chunk path\n/,
        );
        chunkPathServed(apply);
      });
      await slotBMatchesV2(device);
    } finally {
      await device.close();
    }
  });

  test("a delta the index lists but the server does not have: the chunk path is taken (ssh too)", async () => {
    for (const config of [httpsConfig(), sshConfig()]) {
      const device = await deviceOnV1(config);
      try {
        await withFile(deltaFile, undefined, async () => {
          requests.length = 0;
          const apply = await device.run(["--apply"]);
          assert.equal(apply.code, 0, apply.stderr);
          assert.match(apply.stdout, /the delta path failed \(.*\); taking the chunk path\n/);
          if (config.includes("url:")) chunkPathServed(apply);
          else assert.match(apply.stdout, /bytes downloaded \(chunks\)/);
        });
        await slotBMatchesV2(device);
      } finally {
        await device.close();
      }
    }
  });

  test("a broken delta and no chunk index published: only then the full stream", async () => {
    const bad = await readFile(deltaFile);
    bad[bad.length - 1] = (bad[bad.length - 1] as number) ^ 0xff;
    const device = await deviceOnV1(httpsConfig());
    try {
      await withFile(deltaFile, bad, () =>
        withFile(chunksFile, undefined, async () => {
          const apply = await device.run(["--apply"]);
          assert.equal(apply.code, 0, apply.stderr);
          assert.match(
            apply.stdout,
            /the delta path failed \(the delta has .*\); taking the full stream \(the server offers no chunk index\)/,
          );
          assert.match(apply.stdout, /bytes downloaded \(full\)/);
        }),
      );
      await slotBMatchesV2(device);
    } finally {
      await device.close();
    }
  });

  test("a running slot that no longer holds what its record says: the decode fails, the chunk path is taken", async () => {
    const device = await deviceOnV1(httpsConfig());
    try {
      // The first check records the running root's hash for this boot; then slot A rots.
      assert.equal((await device.run(["--check"])).code, 1);
      const source = await openBlockSource(device.loop);
      let slotA: ByteRange;
      try {
        slotA = partitionRange(
          (await readGpt(source)).table,
          requirePartition((await readGpt(source)).table, "p.lxreadonly"),
        );
      } finally {
        await source.close();
      }
      const handle = await open(device.loop, "r+");
      try {
        await handle.write(Buffer.alloc(4096, 0x5a), 0, 4096, slotA.offset + MiB);
      } finally {
        await handle.close();
      }
      const apply = await device.run(["--apply"]);
      assert.equal(apply.code, 0, apply.stderr);
      assert.match(
        apply.stdout,
        /the delta path failed \(xdelta3 failed .*checksum mismatch.*\); taking the chunk path/,
      );
      // Chunks are found by hash in what slot A holds now: the rotten one is fetched, not copied.
      assert.match(apply.stdout, /bytes downloaded \(chunks\)/);
      await slotBMatchesV2(device);
    } finally {
      await device.close();
    }
  });

  test("a device on a root the server has no delta from: the chunk path (test/integration/chunks.test.ts)", async () => {
    const other = await releaseImage(world, NAME, "1.0.1", {
      payloadBytes: 12 * MiB,
      rootSizeMiB: 80,
      seed: "other",
    });
    const otherManifest = await manifestOf(other);
    await copyFile(other, join(world.dir, "device-other.raw"));
    const copy = join(world.dir, "device-other-run.raw");
    await copyFile(join(world.dir, "device-other.raw"), copy);
    const device = await makeDevice(copy, otherManifest, {
      config: httpsConfig(),
      keys: [join(world.keysDir, "release.pub")],
      token,
    });
    try {
      const check = await device.run(["--check", "--json"]);
      const download = JSON.parse(check.stdout).download;
      assert.equal(download.path, "chunks");
      assert.equal(download.full_bytes, v2Manifest.partitions.root.data_bytes);
      assert.ok(download.bytes <= download.full_bytes, JSON.stringify(download));
    } finally {
      await device.close();
    }
  });
});
