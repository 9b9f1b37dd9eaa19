import { makeTestCert, startServer } from "../helpers/serve.ts";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { readFile, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import type { ChildProcess } from "node:child_process";
import { runEos } from "../helpers/run.ts";
import { partitionBytes } from "../helpers/sample-image.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

interface Reply {
  status: number;
  headers: IncomingMessage["headers"];
  body: Buffer;
}

function get(
  url: string,
  headers: Record<string, string> = {},
  options: { method?: string; ca?: Buffer } = {},
): Promise<Reply> {
  const u = new URL(url);
  const request = u.protocol === "https:" ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(
      u,
      { method: options.method ?? "GET", headers, agent: false, ...(options.ca ? { ca: options.ca } : {}) },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end();
  });
}

describe("os-update-server serve", () => {
  let world: World;
  let server: ChildProcess;
  let base: string;
  let token: string;
  const name = "EOS.x86_64-AB";
  const tokensDir = () => join(world.dir, "tokens");
  const auth = () => ({ authorization: `Bearer ${token}` });
  let v1Root: Buffer;

  before(async () => {
    world = await makeWorld();
    await writeServerConfig(world, [{ image: `${world.origin.url}/${name}.raw.xz`, name }]);
    await releaseImage(world, name, "1.0.0", { payloadBytes: 12 * 1024 * 1024 });
    const fetched = await runEos("os-update-server", ["fetch", "--config", world.config]);
    assert.equal(fetched.code, 0, fetched.stderr);
    v1Root = await partitionBytes(join(world.imagesDir, `${name}.raw`), "p.lxreadonly");
    const added = await runEos("os-update-server", ["token", "add", "device-1", "--tokens-dir", tokensDir()]);
    assert.equal(added.code, 0, added.stderr);
    token = added.stdout.toString().trim();
    const running = await startServer({ config: world.config, tokensDir: tokensDir() });
    server = running.child;
    base = running.url;
  });

  after(async () => {
    server.kill("SIGTERM");
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  });

  test("health needs no token", async () => {
    const r = await get(`${base}/health`);
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(r.body.toString()), {
      status: "ok",
      images: 1,
      database: "ok",
      store: "ok",
      storage: "directory",
    });
  });

  test("everything else needs a valid device token; the token file holds only its hash, mode 0600", async () => {
    assert.equal((await get(`${base}/v1/images`)).status, 401);
    assert.equal(
      (await get(`${base}/v1/images`, { authorization: "Bearer wrong-token-wrong-token" })).status,
      401,
    );
    const r = await get(`${base}/v1/images`, auth());
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(r.body.toString()), { images: [{ name, version: "1.0.0", signed: true }] });
    const stored = await readFile(join(tokensDir(), "device-1"), "utf8");
    assert.equal(stored.trim(), sha256(Buffer.from(token)));
    assert.ok(!stored.includes(token));
    assert.equal((await stat(join(tokensDir(), "device-1"))).mode & 0o777, 0o600);
  });

  test("manifest and signature are the published bytes", async () => {
    const m = await get(`${base}/v1/images/${name}/manifest.json`, auth());
    assert.equal(m.status, 200);
    assert.ok(m.body.equals(await readFile(join(world.imagesDir, `${name}.manifest.json`))));
    const s = await get(`${base}/v1/images/${name}/manifest.json.sig`, auth());
    assert.ok(s.body.equals(await readFile(join(world.imagesDir, `${name}.manifest.json.sig`))));
  });

  test("root and firmware streams are exactly the partitions, with the manifest hash as ETag", async () => {
    const manifest = JSON.parse(
      (await get(`${base}/v1/images/${name}/manifest.json`, auth())).body.toString(),
    ) as {
      partitions: { root: { sha256: string; size: number }; firmware: { sha256: string } };
    };
    const root = await get(`${base}/v1/images/${name}/root`, auth());
    assert.equal(root.status, 200);
    assert.ok(root.body.equals(v1Root));
    assert.equal(sha256(root.body), manifest.partitions.root.sha256);
    assert.equal(root.headers.etag, `"${manifest.partitions.root.sha256}"`);
    assert.equal(root.headers["x-eos-version"], "1.0.0");
    const fw = await get(`${base}/v1/images/${name}/firmware`, auth());
    assert.ok(fw.body.equals(await partitionBytes(join(world.imagesDir, `${name}.raw`), "p.UEFI")));
    const head = await get(`${base}/v1/images/${name}/root`, auth(), { method: "HEAD" });
    assert.equal(head.headers["content-length"], String(manifest.partitions.root.size));
    assert.equal(head.body.length, 0);
  });

  test("Range resumes a download; If-Range with another version's ETag gets the whole stream", async () => {
    const from = 5_000_000;
    const part = await get(`${base}/v1/images/${name}/root`, { ...auth(), range: `bytes=${from}-` });
    assert.equal(part.status, 206);
    assert.equal(part.headers["content-range"], `bytes ${from}-${v1Root.length - 1}/${v1Root.length}`);
    assert.ok(part.body.equals(v1Root.subarray(from)));
    const etag = `"${sha256(v1Root)}"`;
    const same = await get(`${base}/v1/images/${name}/root`, {
      ...auth(),
      range: "bytes=10-19",
      "if-range": etag,
    });
    assert.equal(same.status, 206);
    assert.ok(same.body.equals(v1Root.subarray(10, 20)));
    const other = await get(`${base}/v1/images/${name}/root`, {
      ...auth(),
      range: "bytes=10-19",
      "if-range": '"0000"',
    });
    assert.equal(other.status, 200);
    assert.equal(other.body.length, v1Root.length);
    const beyond = await get(`${base}/v1/images/${name}/root`, {
      ...auth(),
      range: `bytes=${v1Root.length}-`,
    });
    assert.equal(beyond.status, 416);
  });

  test("the chunk index is the one the signed manifest names by hash; none for an unknown image", async () => {
    const manifest = JSON.parse(await readFile(join(world.imagesDir, `${name}.manifest.json`), "utf8")) as {
      partitions: { root: { chunk_index: { size: number; sha256: string } } };
    };
    const r = await get(`${base}/v1/images/${name}/chunks`, auth());
    assert.equal(r.status, 200);
    assert.equal(r.body.length, manifest.partitions.root.chunk_index.size);
    assert.equal(sha256(r.body), manifest.partitions.root.chunk_index.sha256);
    assert.equal((await get(`${base}/v1/images/${name}/chunks`)).status, 401);
    assert.equal((await get(`${base}/v1/images/Nope/chunks`, auth())).status, 404);
    assert.equal((await get(`${base}/v1/images/${name}/chunks/x`, auth())).status, 404);
  });

  test("unknown images, bad names and unknown paths are refused", async () => {
    assert.equal((await get(`${base}/v1/images/Nope/root`, auth())).status, 404);
    assert.equal((await get(`${base}/v1/images/..%2F..%2Fetc/root`, auth())).status, 400);
    assert.equal((await get(`${base}/v1/images/${name}/../../etc/shadow`, auth())).status, 404);
    assert.equal((await get(`${base}/etc/shadow`, auth())).status, 404);
    assert.equal((await get(`${base}/v1/images`, auth(), { method: "DELETE" })).status, 405);
  });

  test("a client streaming v1 while v2 and v3 are published gets all of v1, intact; the next client gets v3", async () => {
    const url = new URL(`${base}/v1/images/${name}/root`);
    const slow = new Promise<Buffer>((resolve, reject) => {
      const req = httpRequest(url, { headers: { ...auth() }, agent: false }, (res) => {
        const chunks: Buffer[] = [];
        let paused = false;
        res.on("data", (c: Buffer) => {
          chunks.push(c);
          if (!paused) {
            paused = true;
            res.pause();
            // Publish v2 while this response is paused mid-stream.
            void (async () => {
              // Two publishes: the store then deletes v1's directory, so only the open file keeps it readable.
              for (const version of ["2.0.0", "3.0.0"]) {
                await releaseImage(world, name, version, { payloadBytes: 12 * 1024 * 1024 });
                const r = await runEos("os-update-server", ["fetch", "--config", world.config]);
                assert.equal(r.code, 0, r.stderr);
              }
              res.resume();
            })().catch(reject);
          }
        });
        res.on("end", () => resolve(Buffer.concat(chunks)));
        res.on("error", reject);
      });
      req.on("error", reject);
      req.end();
    });
    const got = await slow;
    assert.equal(sha256(got), sha256(v1Root), "the paused client received v1 byte for byte");
    const next = await get(`${base}/v1/images/${name}/root`, auth());
    assert.equal(next.headers["x-eos-version"], "3.0.0");
    assert.ok(next.body.equals(await partitionBytes(join(world.imagesDir, `${name}.raw`), "p.lxreadonly")));
    assert.ok(!next.body.equals(v1Root));
  });

  test("clients that go away mid-stream do not take the server down", async () => {
    for (let i = 0; i < 20; i++) {
      await new Promise<void>((resolve) => {
        const req = httpRequest(
          new URL(`${base}/v1/images/${name}/root`),
          { headers: auth(), agent: false },
          (res) => {
            let seen = 0;
            res.on("data", (c: Buffer) => {
              seen += c.length;
              if (seen > 300_000) req.destroy();
            });
            res.on("close", () => resolve());
          },
        );
        req.on("error", () => resolve());
        req.end();
      });
    }
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(server.exitCode, null, "the server is still running");
    assert.equal((await get(`${base}/health`)).status, 200);
  });

  test("a revoked token stops working at once", async () => {
    const r = await runEos("os-update-server", ["token", "revoke", "device-1", "--tokens-dir", tokensDir()]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await get(`${base}/v1/images`, auth())).status, 401);
  });

  test("requests are logged as JSON lines with status, bytes and device", async () => {
    // The server logs to stdout; collect a little of it.
    const lines: string[] = [];
    server.stdout?.on("data", (s: string) => lines.push(...s.split("\n").filter(Boolean)));
    await get(`${base}/health`);
    await new Promise((r) => setTimeout(r, 200));
    const entry = lines
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => l.path === "/health");
    assert.ok(entry, lines.join("\n"));
    assert.equal(entry.status, 200);
    assert.equal(entry.msg, "request");
    assert.equal(typeof entry.ms, "number");
  });
});

describe("os-update-server serve over TLS", () => {
  test("serves HTTPS with the configured certificate", async () => {
    const world = await makeWorld();
    const name = "EOS.tls";
    await writeServerConfig(world, [{ image: `${world.origin.url}/${name}.raw.xz`, name }]);
    await releaseImage(world, name, "1");
    assert.equal((await runEos("os-update-server", ["fetch", "--config", world.config])).code, 0);
    const { cert, key } = await makeTestCert(world.dir);
    const running = await startServer({ config: world.config, tls: { cert, key } });
    const server = running.child;
    try {
      const url = running.url;
      assert.match(url, /^https:/);
      const r = await get(`${url}/v1/images/${name}/root`, {}, { ca: await readFile(cert) });
      assert.equal(r.status, 200);
      assert.ok(r.body.equals(await partitionBytes(join(world.imagesDir, `${name}.raw`), "p.lxreadonly")));
      await assert.rejects(get(`${url}/health`), /self-signed|unable to verify|certificate/);
    } finally {
      server.kill("SIGTERM");
      await world.origin.close();
      await rm(world.dir, { recursive: true, force: true });
    }
  });
});
