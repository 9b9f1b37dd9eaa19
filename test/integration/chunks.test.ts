/**
 * The chunk path end to end (issue 12 items 2-4): the real server publishes
 * the root's chunk index and no pair deltas (delta_from: 0); a device on v1
 * fetches the index, checks it against the signed manifest, copies the chunks
 * its running slot holds and fetches only the rest by range, over HTTPS and
 * SSH. An index that lies or a server that ignores Range falls back to the
 * full stream; a SIGKILL mid-apply leaves chunks in place that the next
 * apply does not fetch again. Every run ends with slot B verified.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { copyFile, open, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { request as httpsRequest } from "node:https";
import { join } from "node:path";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { DIST, runEos } from "../helpers/run.ts";
import { partitionBytes } from "../helpers/sample-image.ts";
import { squashfsBytesUsed, verityLayout } from "../../src/core/verity.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";
import { makeDevice, type TestDevice } from "../helpers/device.ts";
import { writeBootControl } from "../../src/io/update/boot-control.ts";
import { startUpdateServers, type LoggedRequest, type UpdateServers } from "../helpers/update-servers.ts";

const NAME = "EOS.x86_64-AB";
const MiB = 1024 * 1024;
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

interface Manifest {
  version: string;
  partitions: {
    root: { sha256: string; size: number; data_bytes: number; verity: { data_blocks: number } };
  };
}

/** v1 and v2 share their payload (the same seed): v2 changes a few small files, as a package would. */
const FIXTURE = { payloadBytes: 12 * MiB, rootSizeMiB: 80, seed: "base", verity: true };
/** Where a sample image's root slot starts: after 1 MiB of GPT and the 8 MiB ESP. */
const ROOT_OFFSET = 2048 * 512 + 8 * MiB;

/** The chunks of an index file (a header line, then 4-byte size + sha256 per chunk). */
function indexChunks(index: Buffer): Array<{ offset: number; size: number }> {
  const chunks: Array<{ offset: number; size: number }> = [];
  for (let at = index.indexOf(0x0a) + 1, offset = 0; at < index.length; at += 36) {
    chunks.push({ offset, size: index.readUInt32BE(at) });
    offset += index.readUInt32BE(at);
  }
  return chunks;
}

/** [start, end) of each ranged read of the root in the server's log. */
function rootRanges(requests: LoggedRequest[]): Array<[number, number]> {
  return requests
    .filter((r) => r.path.endsWith("/root"))
    .map((r) => {
      const m = /^bytes=(\d+)-(\d+)$/.exec(r.range ?? "");
      assert.ok(m, `a ranged read: ${JSON.stringify(r)}`);
      return [Number(m[1]), Number(m[2]) + 1];
    });
}

describe("the chunk path: a signed chunk index, known chunks copied, the rest fetched by range", () => {
  let world: World;
  let servers: UpdateServers;
  let url: string;
  let token: string;
  let cert: string;
  let v1Manifest: Manifest;
  let v2Manifest: Manifest;
  let chunksFile: string;
  let requests: LoggedRequest[] = [];
  const rootBytes = () => requests.filter((r) => r.path.endsWith("/root")).reduce((n, r) => n + r.bytes, 0);

  before(async () => {
    world = await makeWorld();
    await writeServerConfig(world, [
      { image: `${world.origin.url}/${NAME}.raw.xz`, name: NAME, delta_from: 0 },
    ]);
    const v1 = await releaseImage(world, NAME, "1.0.0", FIXTURE);
    v1Manifest = JSON.parse(await readFile(`${v1}.manifest.json`, "utf8")) as Manifest;
    await copyFile(v1, join(world.dir, "device-v1.raw"));
    assert.equal((await runEos("os-update-server", ["fetch", "--config", world.config])).code, 0);
    const v2 = await releaseImage(world, NAME, "2.0.0", FIXTURE);
    v2Manifest = JSON.parse(await readFile(`${v2}.manifest.json`, "utf8")) as Manifest;
    const fetched = await runEos("os-update-server", ["fetch", "--config", world.config]);
    assert.equal(fetched.code, 0, fetched.stderr);
    const versions = join(world.imagesDir, ".versions", NAME);
    const current = (await readdir(versions)).find((v) => v.startsWith("2.0.0-")) as string;
    chunksFile = join(versions, current, `${NAME}.chunks`);

    servers = await startUpdateServers(world);
    ({ url, token, cert, requests } = servers);
  });

  after(async () => {
    servers?.stop();
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  });

  const httpsConfig = () => servers.httpsConfig(NAME);
  const sshConfig = () => servers.sshConfig(NAME);

  /** A plain HTTP proxy to the real server; `pass` may change a request's headers, or answer or hold it (false). */
  async function startProxy(
    pass: (
      req: IncomingMessage,
      headers: Record<string, string | string[] | undefined>,
      res: ServerResponse,
    ) => boolean,
    /** Bytes of this request's answer to pass before the connection is cut; undefined: all. */
    cutAfter: (req: IncomingMessage, length: number) => number | undefined = () => undefined,
  ): Promise<{ proxy: Server; port: number }> {
    const target = new URL(url);
    const ca = await readFile(cert);
    const proxy = createServer((req, res) => {
      const headers: Record<string, string | string[] | undefined> = { ...req.headers, host: target.host };
      if (!pass(req, headers, res)) return;
      const out = httpsRequest(
        { host: target.hostname, port: target.port, path: req.url, method: req.method, headers, ca },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          const cut = cutAfter(req, Number(answer.headers["content-length"]));
          if (cut === undefined) return void answer.pipe(res);
          let sent = 0;
          answer.on("data", (piece: Buffer) => {
            if (sent >= cut) return;
            res.write(piece.subarray(0, cut - sent));
            sent += piece.length;
            if (sent >= cut) setTimeout(() => res.destroy(), 50);
          });
        },
      );
      out.on("error", () => res.destroy());
      out.end();
    });
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    return { proxy, port: (proxy.address() as { port: number }).port };
  }

  async function deviceOnV1(config: string): Promise<TestDevice> {
    return makeDevice(join(world.dir, "device-v1.raw"), v1Manifest, {
      config,
      keys: [join(world.keysDir, "release.pub")],
      token,
    });
  }

  /** `--check --json` in this process, with the bytes it read (/proc/self/io: files, block devices, sockets). */
  async function checkReading(device: TestDevice) {
    const rchar = async () => Number(/rchar: (\d+)/.exec(await readFile("/proc/self/io", "utf8"))?.[1]);
    const before = await rchar();
    const check = await device.run(["--check", "--json"]);
    const read = (await rchar()) - before;
    assert.equal(check.code, 1, check.stderr);
    return { download: JSON.parse(check.stdout).download, read };
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
    assert.equal(env.get("eos_default"), "A", "the running slot stays the default");
  }

  test("https: --check --json names the chunk path and its bytes; --apply fetches only those", async () => {
    const device = await deviceOnV1(httpsConfig());
    try {
      const check = await device.run(["--check", "--json"]);
      assert.equal(check.code, 1, check.stderr);
      const download = JSON.parse(check.stdout).download;
      assert.equal(download.path, "chunks", JSON.stringify(download));
      assert.equal(download.full_bytes, v2Manifest.partitions.root.data_bytes);
      assert.ok(download.bytes > 0 && download.bytes < download.full_bytes / 4, JSON.stringify(download));
      assert.ok(download.requests >= 1 && download.copied_chunks > 0, JSON.stringify(download));
      // A check does not read slot B; it is blank here, so the bound is what --apply downloads.
      assert.equal(download.exact, false, "a check's chunk figure is an upper bound");
      requests.length = 0;
      const apply = await device.run(["--apply"]);
      assert.equal(apply.code, 0, apply.stderr);
      assert.match(apply.stdout, /taking the chunk path/);
      assert.match(
        apply.stdout,
        new RegExp(`from ${download.bytes + download.index_bytes} bytes downloaded \\(chunks\\)`),
      );
      await slotBMatchesV2(device);
      const ranged = requests.filter((r) => r.path.endsWith("/root"));
      assert.equal(rootBytes(), download.bytes, "bytes of the root the server sent");
      assert.equal(ranged.length, download.requests);
      assert.ok(ranged.every((r) => r.status === 206));
      assert.ok(requests.some((r) => r.path.endsWith("/chunks")));
      console.log(
        `chunk path: ${rootBytes()} bytes of the root in ${ranged.length} requests + ${download.index_bytes} bytes of index; full stream: ${download.full_bytes} bytes`,
      );
    } finally {
      await device.close();
    }
  });

  test("the dm-verity tree is not downloaded: the device computes it from the file system it assembled", async () => {
    const root = v2Manifest.partitions.root;
    const treeAt = root.verity.data_blocks * 4096;
    // The chunk holding the file system's last bytes may reach into the tree: it is taken whole.
    const edge = indexChunks(await readFile(chunksFile)).find((c) => c.offset + c.size >= treeAt);
    assert.ok(edge && edge.offset < treeAt && edge.size <= 64 * 1024, JSON.stringify(edge));
    const device = await deviceOnV1(httpsConfig());
    try {
      const check = await device.run(["--check", "--json"]);
      const download = JSON.parse(check.stdout).download;
      assert.equal(download.path, "chunks", check.stdout);
      assert.equal(download.tree_bytes, root.data_bytes - treeAt, "superblock and tree, up to the zero tail");
      requests.length = 0;
      const apply = await device.run(["--apply"]);
      assert.equal(apply.code, 0, apply.stderr);
      assert.match(
        apply.stdout,
        new RegExp(`its dm-verity tree \\(${download.tree_bytes} bytes\\) computed here`),
      );
      assert.match(apply.stdout, /bytes downloaded \(chunks\)/, "no fallback to the full stream");
      const ranges = rootRanges(requests);
      assert.ok(ranges.length > 0);
      for (const [start, end] of ranges) {
        assert.ok(start < treeAt, `no range starts in the tree (at ${treeAt}): ${start}-${end}`);
        assert.ok(
          end <= edge.offset + edge.size,
          `none reaches past the file system's last chunk: ${start}-${end}`,
        );
      }
      assert.equal(rootBytes(), download.bytes, "what --check said");
      await slotBMatchesV2(device);
      const inTree = ranges.reduce((n, [start, end]) => n + Math.max(0, end - Math.max(start, treeAt)), 0);
      console.log(
        `chunk path: ${rootBytes()} bytes of the root in ${ranges.length} ranges, ${inTree} of them past the file system (its last chunk); the dm-verity tree's ${download.tree_bytes} bytes computed on the device`,
      );
    } finally {
      await device.close();
    }
  });

  test("--check stays cheap: the target slot is never read, the running slot's chunks once per root", async () => {
    const device = await deviceOnV1(httpsConfig());
    try {
      const cache = join(device.root, "run/eos/running-chunks.bin");
      const first = await checkReading(device);
      assert.equal(first.download.path, "chunks");
      assert.ok((await stat(cache)).size > 0, "the running root's chunk list is kept");
      // The second check of the same running root reads neither slot: its hash is known for this
      // boot, its chunks are in the cache, and slot B (12 MiB of data to hash) is not read at all.
      const second = await checkReading(device);
      assert.deepEqual(second.download, first.download, "the same answer from the cache");
      assert.ok(second.read < 2 * MiB, `the second check read ${second.read} bytes`);
      // A cache for another root (or one that does not parse) is ignored: the slot is chunked again.
      const bytes = await readFile(cache);
      await writeFile(
        cache,
        Buffer.from(bytes.toString("latin1").replace(/"sha256":"[0-9a-f]/, '"sha256":"x'), "latin1"),
      );
      const third = await checkReading(device);
      assert.deepEqual(third.download, first.download);
      assert.ok(third.read >= 12 * MiB, `the slot was chunked again (${third.read} bytes read)`);
      assert.deepEqual(await readFile(cache), bytes, "and the cache written again for the running root");
      console.log(`--check read ${first.read} bytes, then ${second.read} bytes with the cache`);
    } finally {
      await device.close();
    }
  });

  test("ssh: the forced command serves the index and the ranges", async () => {
    const device = await deviceOnV1(sshConfig());
    try {
      const apply = await device.run(["--apply"]);
      assert.equal(apply.code, 0, apply.stderr);
      assert.match(apply.stdout, /bytes downloaded \(chunks\)/);
      await slotBMatchesV2(device);
    } finally {
      await device.close();
    }
  });

  test("a chunk index that does not match the signed manifest: not used, the full stream is taken", async () => {
    const good = await readFile(chunksFile);
    const bad = Buffer.from(good);
    bad[bad.length - 1] = (bad[bad.length - 1] as number) ^ 0xff;
    await writeFile(chunksFile, bad);
    const device = await deviceOnV1(httpsConfig());
    try {
      const apply = await device.run(["--apply"]);
      assert.equal(apply.code, 0, apply.stderr);
      assert.match(
        apply.stdout,
        /full stream: .*the chunk index is not usable: .*sha256 .*the signed manifest says/,
      );
      assert.match(apply.stdout, /bytes downloaded \(full\)/);
      await slotBMatchesV2(device);
    } finally {
      await writeFile(chunksFile, good);
      await device.close();
    }
  });

  test("a server that ignores Range: the chunk path says so and the full stream is taken", async () => {
    // A proxy in front of the real server that drops Range and If-Range, as some caches do.
    const { proxy, port } = await startProxy((_req, headers) => {
      delete headers.range;
      delete headers["if-range"];
      return true;
    });
    const device = await deviceOnV1(`update:\n  name: ${NAME}\n  url: http://127.0.0.1:${port}\n`);
    try {
      const apply = await device.run(["--apply"]);
      assert.equal(apply.code, 0, apply.stderr);
      assert.match(
        apply.stdout,
        /the chunk path failed \(the server did not honour the range request.*\); taking the full stream/,
      );
      assert.match(apply.stdout, /bytes downloaded \(full\)/);
      await slotBMatchesV2(device);
    } finally {
      proxy.closeAllConnections();
      proxy.close();
      await device.close();
    }
  });

  test("a range request cut mid-way is asked again for the rest of it; the chunk path goes on", async () => {
    // Chunk boundaries from the published index (a header line, then 4-byte size + sha256 per chunk).
    const index = await readFile(chunksFile);
    const boundaries = new Set<number>();
    for (let at = index.indexOf(0x0a) + 1, offset = 0; at < index.length; at += 36)
      boundaries.add((offset += index.readUInt32BE(at)));
    const ranges: string[] = [];
    let cut: string | undefined;
    let spans = false;
    // The first ranged answer is cut: one byte into its second chunk when it spans more than one
    // (the first has landed), else half-way; the connection resets.
    const { proxy, port } = await startProxy(
      (req) => {
        if (req.url?.endsWith("/root")) ranges.push(String(req.headers.range));
        return true;
      },
      (req) => {
        if (!req.url?.endsWith("/root") || cut !== undefined) return undefined;
        const [start, end] = (/bytes=(\d+)-(\d+)/.exec(String(req.headers.range)) ?? []).slice(1).map(Number);
        const inside = [...boundaries].find((b) => b > start! && b <= end!);
        cut = String(req.headers.range);
        spans = inside !== undefined;
        return inside === undefined ? Math.floor((end! - start! + 1) / 2) : inside - start! + 1;
      },
    );
    const device = await deviceOnV1(`update:\n  name: ${NAME}\n  url: http://127.0.0.1:${port}\n`);
    try {
      requests.length = 0;
      const apply = await device.run(["--apply"]);
      assert.equal(apply.code, 0, apply.stderr);
      const plan = /taking the chunk path: (\d+) bytes of the root in (\d+) ranges/.exec(apply.stdout);
      assert.ok(plan, apply.stdout);
      assert.match(apply.stdout, /bytes downloaded \(chunks\)/, "no fallback to the full stream");
      assert.match(apply.stderr, /the request for bytes \d+-\d+ of the root broke off .*; asking again for/);
      assert.equal(ranges.length, Number(plan[2]) + 1, `one more request: ${ranges.join(", ")}`);
      assert.ok(cut, `a range was cut: ${ranges.join(", ")}`);
      const again = ranges[ranges.indexOf(cut) + 1] as string;
      const [from, to] = [cut, again].map((r) => /bytes=(\d+)-(\d+)/.exec(r)?.slice(1).map(Number));
      assert.ok(from && to, `${cut}, then ${again}`);
      assert.equal(to[1], from[1], `the same end: ${cut}, then ${again}`);
      // This fixture's ranges are single chunks as a rule: then the whole range again.
      if (spans) assert.ok(to[0]! > from[0]!, `only what had not landed: ${cut}, then ${again}`);
      else assert.equal(to[0], from[0]);
      console.log(`a cut range, asked again: ${ranges.join(", ")}`);
      assert.ok(rootBytes() < 2 * Number(plan[1]), `${rootBytes()} bytes of the root served, not the stream`);
      await slotBMatchesV2(device);
    } finally {
      proxy.closeAllConnections();
      proxy.close();
      await device.close();
    }
  });

  test("SIGKILL in a chunked apply: the next --apply fetches only what the slot does not hold yet", async () => {
    const device = await deviceOnV1(httpsConfig());
    try {
      const first = JSON.parse((await device.run(["--check", "--json"])).stdout).download;
      assert.equal(first.path, "chunks");
      assert.equal(first.held_bytes, 0);
      // The apply runs through a proxy that holds the second range request: by then the first
      // range is written (each is written before the next is asked for); the test kills it there.
      let ranges = 0;
      const apply1: { child?: ChildProcess } = {};
      const { proxy, port } = await startProxy((req) => {
        if (!req.url?.endsWith("/root")) return true;
        ranges++;
        if (ranges === 2) apply1.child?.kill("SIGKILL");
        return ranges < 2;
      });
      const config = join(device.root, "etc/os-update.yml");
      const httpsYml = await readFile(config, "utf8");
      await writeFile(config, `update:\n  name: ${NAME}\n  url: http://127.0.0.1:${port}\n`);
      requests.length = 0;
      const child = spawn(process.execPath, [join(DIST, "os-update.mjs"), "--apply"], {
        env: { ...process.env, EOS_ROOT: device.root },
        stdio: "ignore",
      });
      apply1.child = child;
      const [, signal] = (await once(child, "exit")) as [number | null, string | null];
      proxy.closeAllConnections();
      proxy.close();
      await writeFile(config, httpsYml);
      assert.equal(signal, "SIGKILL", "the apply was killed");
      const killedBytes = rootBytes();
      assert.ok(
        killedBytes > 0 && killedBytes < first.bytes,
        `${killedBytes} of ${first.bytes} bytes before the kill`,
      );
      assert.equal((await device.grubenv()).get("eos_trial"), "", "nothing on trial after the kill");
      requests.length = 0;
      const apply = await device.run(["--apply"]);
      assert.equal(apply.code, 0, apply.stderr);
      // --apply plans exactly: it hashes slot B for what the killed run left there.
      const plan = /taking the chunk path: (\d+) bytes of the root .* (\d+) bytes already in place/.exec(
        apply.stdout,
      );
      assert.ok(plan, apply.stdout);
      const [rest, held] = [Number(plan[1]), Number(plan[2])];
      assert.ok(held > 0, `${held} bytes held`);
      assert.ok(rest < first.bytes, `${rest} < ${first.bytes}`);
      assert.equal(rootBytes(), rest, "only the rest was fetched");
      await slotBMatchesV2(device);
      console.log(
        `resume: ${first.bytes} bytes planned, ${killedBytes} sent before the kill, ${rest} fetched after it`,
      );
    } finally {
      await device.close();
    }
  });

  // Last: it publishes v3, which every later apply would be offered.
  test("a tree the device computes otherwise than the build did: only the build's tree is fetched, by range; if that fails too, the full stream", async () => {
    // v3's dm-verity superblock carries another UUID (veritysetup's random one, as a root made
    // outside eos build may have): its signed slot is not what the device computes.
    const v3 = await releaseImage(world, NAME, "3.0.0", {
      ...FIXTURE,
      beforeSign: async (raw) => {
        const handle = await open(raw, "r+");
        try {
          const head = Buffer.alloc(96);
          await handle.read(head, 0, 96, ROOT_OFFSET);
          const at = ROOT_OFFSET + verityLayout(squashfsBytesUsed(head) as number).superblockOffset;
          const magic = Buffer.alloc(8);
          await handle.read(magic, 0, 8, at);
          assert.equal(magic.toString("latin1"), "verity\0\0", "the superblock is where EOS puts it");
          await handle.write(Buffer.from("0123456789abcdef"), 0, 16, at + 16);
        } finally {
          await handle.close();
        }
      },
    });
    const v3Manifest = JSON.parse(await readFile(`${v3}.manifest.json`, "utf8")) as Manifest;
    const fetched = await runEos("os-update-server", ["fetch", "--config", world.config]);
    assert.equal(fetched.code, 0, fetched.stderr);
    const root = v3Manifest.partitions.root;
    const treeAt = root.verity.data_blocks * 4096;
    const versions = join(world.imagesDir, ".versions", NAME);
    const current = (await readdir(versions)).find((v) => v.startsWith("3.0.0-")) as string;
    const v3Chunks = indexChunks(await readFile(join(versions, current, `${NAME}.chunks`)));
    // The chunk that holds the file system's last bytes: the build's tree is fetched from it on.
    const edge = v3Chunks.find((c) => c.offset + c.size > treeAt);
    assert.ok(edge && edge.offset < treeAt, JSON.stringify(edge));
    // A proxy that never serves the full stream (the root's data, from its first byte), and, when
    // asked to, not the tree's ranges either (the chunk path's planned ranges end at `edge`'s end).
    const whole = `bytes=0-${root.data_bytes - 1}`;
    let refuseTree = false;
    const { proxy, port } = await startProxy((req, headers, res) => {
      if (!req.url?.endsWith("/root")) return true;
      const end = Number(/-(\d+)$/.exec(String(headers.range))?.[1]) + 1;
      if (headers.range && headers.range !== whole && !(refuseTree && end > edge.offset + edge.size))
        return true;
      res.writeHead(404).end();
      return false;
    });
    const config = `update:\n  name: ${NAME}\n  url: http://127.0.0.1:${port}\n`;
    const fetchedTree = new RegExp(
      `the slot with the dm-verity tree computed here holds sha256 [0-9a-f]{16}…, the signed manifest says ${root.sha256.slice(0, 16)}…\nfetching the build's dm-verity tree: ${root.data_bytes - edge.offset} bytes in 1 ranges\n`,
    );
    const device = await deviceOnV1(config);
    try {
      const fresh = await device.grubenv();
      requests.length = 0;
      const apply = await device.run(["--apply"]);
      assert.equal(apply.code, 0, apply.stdout + apply.stderr);
      const plan = /taking the chunk path: (\d+) bytes of the root in (\d+) ranges/.exec(apply.stdout);
      assert.ok(plan, apply.stdout);
      assert.match(apply.stdout, fetchedTree);
      assert.match(apply.stdout, /the slot verifies with the build's dm-verity tree \(\d+ bytes fetched\)/);
      assert.match(apply.stdout, /bytes downloaded \(chunks\)/, "no fallback to the full stream");
      // After the planned ranges, only the tree's: from the edge chunk to the end of the stream.
      const ranges = rootRanges(requests.filter((r) => r.status === 206));
      assert.equal(ranges.length, requests.filter((r) => r.path.endsWith("/root")).length, "no full stream");
      assert.deepEqual(ranges.slice(Number(plan[2])), [[edge.offset, root.data_bytes]]);
      assert.equal(rootBytes(), Number(plan[1]) + root.data_bytes - edge.offset);
      const slotB = await partitionBytes(device.image, "p.lxrootclone1");
      assert.equal(sha256(slotB.subarray(0, root.size)), root.sha256, "slot B verifies as v3");
      assert.equal((await device.grubenv()).get("eos_B_sha256"), root.sha256);
      console.log(
        `a computed tree that failed: ${plan[1]} bytes in ${plan[2]} ranges, then the build's tree, ${root.data_bytes - edge.offset} bytes in 1 range`,
      );
      // The same device again, its boot control as before (its running slot's chunks are cached,
      // slot B holds v3's file system: seconds saved), and now the build's tree cannot be had
      // either: the full stream, refused too, is the last path.
      refuseTree = true;
      await writeBootControl(device.esp, fresh);
      const before = await device.grubenv();
      const again = await device.run(["--apply"]);
      assert.notEqual(again.code, 0, again.stdout);
      assert.match(again.stdout, /taking the chunk path: .*its dm-verity tree \(\d+ bytes\) computed here/);
      assert.match(again.stdout, fetchedTree);
      assert.match(again.stdout, /the chunk path failed \(.*\); taking the full stream/);
      const after = await device.grubenv();
      // Unchanged but for slot B's record, emptied when the apply began: the slot is marked invalid.
      for (const [key, value] of after)
        assert.equal(value, before.get(key) ?? (key.startsWith("eos_B_") ? "" : undefined), key);
      assert.equal(after.get("eos_default"), "A");
      assert.equal(after.get("eos_trial"), "", "nothing on trial");
      assert.equal(after.get("eos_B_sha256"), "", "slot B stays marked invalid");
      const slotBAfter = await partitionBytes(device.image, "p.lxrootclone1");
      assert.notEqual(sha256(slotBAfter.subarray(0, root.size)), root.sha256);
    } finally {
      proxy.closeAllConnections();
      proxy.close();
      await device.close();
    }
  });
});
