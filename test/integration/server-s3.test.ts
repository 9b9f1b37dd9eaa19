/**
 * The update server on object storage (`storage: s3://…`) against a real
 * S3-compatible server (s3rver from npm, on 127.0.0.1 behind a proxy that
 * records each request): fetch publishes under immutable per-version keys
 * and switches the current pointer last; a device updates through `serve`,
 * which reads the bucket by Range (so does the SSH forced command), and once
 * through presigned redirects;
 * retention deletes old versions' objects; a wrong key, a missing bucket and
 * a stopped store are clear typed errors naming the storage URL. Parts of
 * 1 MiB above 4 MiB (EOS_S3_PART_BYTES) send the raw image and the root
 * stream as multipart uploads; a part that keeps failing aborts them.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { copyFile, readFile, rm, writeFile } from "node:fs/promises";
import { request } from "node:http";
import { join } from "node:path";
import { GetObjectCommand } from "@aws-sdk/client-s3";
import { runEos, startEos } from "../helpers/run.ts";
import { partitionBytes, zstdFile } from "../helpers/sample-image.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";
import { makeDevice } from "../helpers/device.ts";
import { startServer, type RunningServer } from "../helpers/serve.ts";
import { startS3, S3_KEY, type S3Call, type TestS3 } from "../helpers/s3.ts";

const NAME = "EOS.x86_64-AB";
const BUCKET = "eos-images";
const PREFIX = "fleet/";
const URL_OF_STORE = `s3://${BUCKET}/fleet`;
const PART = 1 << 20;
const env = { ...process.env, ...S3_KEY, EOS_S3_PART_BYTES: String(PART) };

interface Manifest {
  version: string;
  partitions: { root: { sha256: string; size: number } };
}

/** GET without following redirects: status, headers and body. */
function get(url: string, headers: Record<string, string> = {}) {
  return new Promise<{ status: number; headers: Record<string, unknown>; body: Buffer }>(
    (resolve, reject) => {
      const req = request(url, { headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
        );
      });
      req.on("error", reject);
      req.end();
    },
  );
}

describe("os-update-server with storage: s3:// (s3rver)", () => {
  let world: World;
  let s3: TestS3;
  let v1: string;
  let v1Manifest: Manifest;
  const raws: Record<string, string> = {};

  const configure = (o: { bucket?: string; endpoint?: string; redirect?: boolean } = {}) =>
    writeServerConfig(
      world,
      [{ image: `${world.origin.url}/${NAME}.raw.zst`, name: NAME, delta_from: 1, keep: 2 }],
      [
        `state_dir: ${join(world.dir, "state")}`,
        `storage: s3://${o.bucket ?? BUCKET}/fleet`,
        "s3:",
        `  endpoint: ${o.endpoint ?? s3.endpoint}`,
        "  region: us-east-1",
        "  force_path_style: true",
        ...(o.redirect ? ["serve:", "  redirect: true", "  redirect_expiry: 60"] : []),
      ].join("\n"),
    );
  const release = async (version: string) => {
    raws[version] = await releaseImage(world, NAME, version, {
      compress: zstdFile,
      payloadBytes: 256 * 1024,
      rootSizeMiB: 8,
    });
    await copyFile(raws[version], join(world.dir, `v${version}.raw`));
    raws[version] = join(world.dir, `v${version}.raw`);
  };
  const fetchImages = (extraEnv: Record<string, string> = {}) =>
    runEos("os-update-server", ["fetch", "--config", world.config], { env: { ...env, ...extraEnv } });
  const published = async () => {
    const got = await s3.client.send(
      new GetObjectCommand({ Bucket: BUCKET, Key: `${PREFIX}${NAME}.current.json` }),
    );
    return JSON.parse(await (got.Body as { transformToString(): Promise<string> }).transformToString()) as {
      vid: string;
      version: string;
    };
  };
  const objectBytes = async (key: string) => {
    const got = await s3.client.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
    return Buffer.from(
      await (got.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray(),
    );
  };
  const versionKeys = async (vid: string) => s3.keys(BUCKET, `${PREFIX}${NAME}/${vid}/`);
  const since = (mark: number, f: (c: S3Call) => boolean) => s3.calls.slice(mark).filter(f);

  before(async () => {
    world = await makeWorld();
    s3 = await startS3(join(world.dir, "s3"), [BUCKET]);
    await configure();
    await release("1.0.0");
    v1 = join(world.dir, "device-v1.raw");
    await copyFile(raws["1.0.0"] as string, v1);
    v1Manifest = JSON.parse(
      await readFile(join(world.dir, "build", `${NAME}.raw.manifest.json`), "utf8"),
    ) as Manifest;
  });
  after(async () => {
    await s3?.close();
    await world?.origin.close();
    if (world) await rm(world.dir, { recursive: true, force: true });
  });

  test("fetch publishes immutable per-version keys and switches the current pointer last", async () => {
    const mark = s3.calls.length;
    // The root's part 2 is refused 3 times, the SDK's own attempts at one UploadPart: fetch sends it again.
    let refused = 0;
    s3.refuse = (c) => c.key.endsWith(".root") && /partNumber=2&/.test(c.query) && refused++ < 3;
    const first = await fetchImages();
    s3.refuse = undefined;
    assert.equal(first.code, 0, first.stderr);
    const one = await published();
    assert.equal(one.version, "1.0.0");
    const keys = await versionKeys(one.vid);
    for (const file of ["raw", "root", "manifest.json", "manifest.json.sig", "raw.sha", "ranges.json"])
      assert.ok(keys.includes(`${PREFIX}${NAME}/${one.vid}/${NAME}.${file}`), `${file} in ${keys.join(" ")}`);
    const puts = since(mark, (c) => c.method === "PUT" && !c.key.includes(".state/")).map((c) => c.key);
    assert.equal(puts.at(-1), `${PREFIX}${NAME}.current.json`, "the pointer is written last");
    assert.equal(puts.at(-2), `${PREFIX}${NAME}/${one.vid}/${NAME}.ranges.json`, "then the version's marker");
    assert.deepEqual(new Set(puts.slice(0, -1)), new Set(keys), "every object of the version before them");

    // Above 4 MiB in parts of 1 MiB, read back whole and byte-identical; small objects in one PUT.
    const rootKey = `${PREFIX}${NAME}/${one.vid}/${NAME}.root`;
    const root = await partitionBytes(raws["1.0.0"] as string, "p.lxreadonly");
    const rootCalls = since(mark, (c) => c.key === rootKey).map((c) => `${c.method} ${c.query}`);
    const parts = rootCalls.filter((c) => c.startsWith("PUT partNumber="));
    assert.equal(parts.length, Math.ceil(root.length / PART) + 3, rootCalls.join("\n"));
    assert.equal(parts.filter((c) => c.startsWith("PUT partNumber=2&")).length, 4, "part 2 sent again");
    assert.equal(rootCalls[0], "POST uploads=", "a multipart upload is created first");
    assert.match(rootCalls.at(-1) as string, /^POST uploadId=/, "and completed last");
    const rawCalls = since(mark, (c) => c.key === `${PREFIX}${NAME}/${one.vid}/${NAME}.raw`);
    assert.ok(rawCalls.filter((c) => c.query.startsWith("partNumber=")).length > 4, "the raw image too");
    const manifestPuts = since(
      mark,
      (c) => c.method !== "GET" && c.key.endsWith(`${one.vid}/${NAME}.manifest.json`),
    );
    assert.deepEqual(
      manifestPuts.map((c) => `${c.method} ${c.query}`),
      ["PUT "],
      "a small object in one PUT",
    );
    assert.ok((await objectBytes(rootKey)).equals(root), "the root object is the root stream");
    const rawSha = createHash("sha256")
      .update(await objectBytes(`${PREFIX}${NAME}/${one.vid}/${NAME}.raw`))
      .digest("hex");
    assert.equal(
      rawSha,
      createHash("sha256")
        .update(await readFile(raws["1.0.0"] as string))
        .digest("hex"),
    );
    assert.deepEqual(await s3.pendingUploads(BUCKET), [], "no upload left open");
  });

  test("a part that keeps failing: its upload and the others in flight are aborted, the pointer stays", async () => {
    const one = await published();
    await release("2.0.0");
    const mark = s3.calls.length;
    s3.refuse = (c) => c.key.endsWith(".root") && /partNumber=2&/.test(c.query);
    // The raw image's parts over a slow link: its upload is still running when the root's fails.
    s3.delay = (c) => (c.key.endsWith(".raw") && c.query.startsWith("partNumber=") ? 300 : 0);
    const failed = await fetchImages();
    s3.refuse = undefined;
    s3.delay = undefined;
    assert.notEqual(failed.code, 0);
    assert.match(
      failed.stderr,
      new RegExp(
        `"code":"STORAGE","error":"${URL_OF_STORE}: uploading part 2 of \\d+ of ${PREFIX}${NAME}/2\\.0\\.0-[^ ]+\\.root failed: InternalError`,
      ),
    );
    assert.doesNotMatch(failed.stderr, /\n\s+at /, "no stack trace");
    const part2 = since(
      mark,
      (c) => c.method === "PUT" && /partNumber=2&/.test(c.query) && c.key.endsWith(".root"),
    );
    assert.equal(part2.length, 9, "3 tries of the SDK's 3 attempts, then no more");
    assert.deepEqual(await s3.pendingUploads(BUCKET), [], "no parts are left stored");
    const aborts = since(mark, (c) => c.method === "DELETE" && c.query.startsWith("uploadId="));
    assert.deepEqual(
      aborts.map((c) => c.key.split(".").at(-1)).sort(),
      ["raw", "root"],
      "the root's upload is aborted, and the raw image's, which was still running",
    );
    const afterAbort = s3.calls.slice(s3.calls.indexOf(aborts[0] as S3Call));
    assert.deepEqual(
      afterAbort.filter((c) => c.method === "PUT" || c.method === "POST"),
      [],
      "nothing is uploaded once a part has failed",
    );
    assert.deepEqual(await published(), one, "the current pointer still names 1.0.0");
    const written = since(mark, (c) => c.method === "PUT").map((c) => c.key);
    assert.ok(
      !written.some((k) => k.endsWith(".ranges.json") || k.endsWith(".current.json")),
      written.join(" "),
    );
  });

  test("a fetch stopped (SIGTERM) while uploading aborts its multipart uploads; the pointer stays", async () => {
    const one = await published();
    const mark = s3.calls.length;
    s3.delay = (c) => (c.key.endsWith(".raw") && c.query.startsWith("partNumber=") ? 300 : 0);
    const child = startEos("os-update-server", ["fetch", "--config", world.config], env);
    let stderr = "";
    child.stderr?.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    child.stdout?.resume();
    let code: number | null | undefined;
    const exited = new Promise<void>((resolve) => child.on("close", (c) => resolve(void (code = c))));
    const rawParts = () => since(mark, (c) => c.key.endsWith(".raw") && c.query.startsWith("partNumber="));
    for (let waited = 0; code === undefined && rawParts().length < 2 && waited < 30_000; waited += 20)
      await new Promise((resolve) => setTimeout(resolve, 20));
    child.kill("SIGTERM");
    await exited;
    s3.delay = undefined;
    assert.ok(rawParts().length >= 2, `the raw image's parts were going up: ${stderr}`);
    assert.notEqual(code, 0, stderr);
    assert.match(stderr, /"code":"INTERRUPTED"/);
    assert.deepEqual(await s3.pendingUploads(BUCKET), [], "no parts are left stored");
    const aborts = since(mark, (c) => c.method === "DELETE" && c.query.startsWith("uploadId="));
    assert.ok(
      aborts.some((c) => c.key.endsWith(".raw")),
      "the raw image's upload is aborted",
    );
    assert.deepEqual(await published(), one, "the current pointer still names 1.0.0");
  });

  test("the next fetch publishes the version beside the unchanged previous one, with its delta", async () => {
    const one = await published();
    assert.equal(one.version, "1.0.0");
    const before2 = await s3.keys(BUCKET, `${PREFIX}${NAME}/${one.vid}/`);
    const mark2 = s3.calls.length;
    const second = await fetchImages();
    assert.equal(second.code, 0, second.stderr);
    const two = await published();
    assert.equal(two.version, "2.0.0");
    assert.notEqual(two.vid, one.vid);
    assert.deepEqual(await versionKeys(one.vid), before2, "version 1's objects stay as they were");
    const written = since(mark2, (c) => c.method === "PUT" || c.method === "DELETE").map((c) => c.key);
    assert.ok(!written.some((k) => k.includes(one.vid)), "nothing of version 1 is rewritten");
    const keys2 = await versionKeys(two.vid);
    assert.ok(keys2.includes(`${PREFIX}${NAME}/${two.vid}/${NAME}.deltas.json`), keys2.join(" "));
    assert.ok(
      keys2.includes(`${PREFIX}${NAME}/${two.vid}/deltas/${v1Manifest.partitions.root.sha256}.xd3`),
      "the delta from 1.0.0 is published with 2.0.0",
    );
    const vids = new Set((await s3.keys(BUCKET, `${PREFIX}${NAME}/`)).map((k) => k.split("/")[2]));
    assert.deepEqual(vids, new Set([one.vid, two.vid]), "the failed publish's objects are gone");
  });

  test("a device updates through serve, which reads the bucket by Range", async () => {
    const server = await startServer({ config: world.config, env });
    const device = await makeDevice(v1, v1Manifest, {
      config: `update:\n  name: ${NAME}\n  url: ${server.url}\n`,
      keys: [join(world.keysDir, "release.pub")],
    });
    try {
      const two = await published();
      const root = await partitionBytes(raws["2.0.0"] as string, "p.lxreadonly");
      const mark = s3.calls.length;
      const r = await get(`${server.url}/v1/images/${NAME}/root`, { range: "bytes=4096-8191" });
      assert.equal(r.status, 206);
      assert.ok(r.body.equals(root.subarray(4096, 8192)), "the stream's bytes at that range");
      assert.deepEqual(
        since(mark, (c) => c.method === "GET" && c.key.endsWith(".root")).map((c) => [c.key, c.range]),
        [[`${PREFIX}${NAME}/${two.vid}/${NAME}.root`, "bytes=4096-8191"]],
        "one ranged GET of the version's root object",
      );

      // The SSH forced command reads the same bucket.
      const ssh = await runEos("os-update-server", ["restricted", "--config", world.config], {
        env: { ...env, SSH_ORIGINAL_COMMAND: `eos-read ${NAME} root 1000 3000` },
      });
      assert.equal(ssh.code, 0, ssh.stderr);
      assert.ok(ssh.stdout.equals(root.subarray(1000, 3000)), "eos-read's bytes of the stream");

      await writeFile(join(device.root, "proc/cmdline"), "quiet\n");
      const applyMark = s3.calls.length;
      const applied = await device.run(["--apply", "--root-device", device.image, "--esp", device.esp]);
      assert.equal(applied.code, 0, applied.stderr);
      assert.match(applied.stdout, /boots 2.0.0 on trial/);
      assert.equal((await device.grubenv()).get("eos_B_sha256"), (await manifestOf("2.0.0")).sha256);
      const reads = since(applyMark, (c) => c.method === "GET" && c.key.includes(two.vid));
      assert.ok(reads.length > 0, "the update was read from the bucket");
    } finally {
      await device.close();
      server.stop();
    }
  });

  test("with serve.redirect a device is sent to presigned URLs and updates from the bucket", async () => {
    await configure({ redirect: true });
    const server: RunningServer = await startServer({ config: world.config, env });
    const device = await makeDevice(v1, v1Manifest, {
      config: `update:\n  name: ${NAME}\n  url: ${server.url}\n`,
      keys: [join(world.keysDir, "release.pub")],
    });
    try {
      const root = await partitionBytes(raws["2.0.0"] as string, "p.lxreadonly");
      let log = "";
      server.child.stdout?.on("data", (d: Buffer) => (log += d.toString()));
      const r = await get(`${server.url}/v1/images/${NAME}/root`, { range: "bytes=100-199" });
      if (r.status !== 302) await new Promise((resolve) => setTimeout(resolve, 300));
      assert.equal(r.status, 302, log);
      const location = String(r.headers.location);
      assert.ok(location.startsWith(`${s3.endpoint}/${BUCKET}/${PREFIX}${NAME}/`), location);
      assert.match(location, /X-Amz-Signature=/);
      const there = await get(location, { range: "bytes=100-199" });
      assert.equal(there.status, 206);
      assert.ok(there.body.equals(root.subarray(100, 200)));

      await writeFile(join(device.root, "proc/cmdline"), "quiet\n");
      const mark = s3.calls.length;
      const applied = await device.run(["--apply", "--root-device", device.image, "--esp", device.esp]);
      assert.equal(applied.code, 0, applied.stderr);
      assert.match(applied.stdout, /boots 2.0.0 on trial/);
      const direct = since(mark, (c) => c.presigned && c.status >= 200 && c.status < 300);
      assert.ok(direct.length > 0, "the device read from the bucket itself");
    } finally {
      await device.close();
      server.stop();
      await configure();
    }
  });

  test("retention deletes the objects of versions no longer kept", async () => {
    const one = (await s3.keys(BUCKET, `${PREFIX}${NAME}/`)).find((k) => k.includes("/1.0.0-"));
    assert.ok(one, "version 1 is in the bucket");
    const vid1 = one.split("/")[2] as string;
    await release("3.0.0");
    const r = await fetchImages();
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /removed an old version/);
    assert.equal((await published()).version, "3.0.0");
    assert.deepEqual(await versionKeys(vid1), [], "no object of 1.0.0 is left");
    const vids = new Set((await s3.keys(BUCKET, `${PREFIX}${NAME}/`)).map((k) => k.split("/")[2]));
    assert.equal(vids.size, 2, "2.0.0 and 3.0.0 are kept (keep: 2)");
  });

  test("a wrong key, a missing bucket, a stopped store: typed errors naming the storage", async () => {
    const noStack = (text: string) => assert.doesNotMatch(text, /\n\s+at /, "no stack trace");
    const wrongKey = await fetchImages({ AWS_ACCESS_KEY_ID: "NOBODY" });
    assert.notEqual(wrongKey.code, 0);
    assert.match(
      wrongKey.stderr,
      new RegExp(`error \\[AUTH\\]: ${URL_OF_STORE}: the storage refused the credentials`),
    );
    noStack(wrongKey.stderr);

    await configure({ bucket: "no-such-bucket" });
    const missing = await fetchImages();
    assert.notEqual(missing.code, 0);
    assert.match(
      missing.stderr,
      /error \[STORAGE\]: s3:\/\/no-such-bucket\/fleet: the bucket no-such-bucket does not exist/,
    );
    noStack(missing.stderr);
    const serveMissing = await runEos(
      "os-update-server",
      ["serve", "--config", world.config, "--no-auth", "--listen", "127.0.0.1", "--port", "0"],
      { env },
    );
    assert.notEqual(serveMissing.code, 0);
    assert.match(serveMissing.stderr, /error \[STORAGE\]: s3:\/\/no-such-bucket\/fleet: the bucket/);

    await configure({ endpoint: s3.storeEndpoint });
    const server = await startServer({ config: world.config, env });
    try {
      assert.equal((await get(`${server.url}/health`)).status, 200);
      await s3.stopStore();
      const health = await get(`${server.url}/health`);
      assert.equal(health.status, 503);
      const said = JSON.parse(health.body.toString()) as Record<string, unknown>;
      assert.deepEqual([said.status, said.store, said.storage], ["unavailable", "failed", "s3"]);
    } finally {
      server.stop();
    }
    const down = await fetchImages();
    assert.notEqual(down.code, 0);
    assert.match(
      down.stderr,
      new RegExp(
        `error \\[STORAGE\\]: ${URL_OF_STORE}: cannot reach the storage at ${s3.storeEndpoint} \\(ECONNREFUSED\\)`,
      ),
    );
    noStack(down.stderr);
  });

  async function manifestOf(version: string) {
    const text = await readFile(join(world.originDir, `${NAME}.raw.manifest.json`), "utf8");
    const m = JSON.parse(text) as Manifest;
    assert.equal(m.version, version);
    return m.partitions.root;
  }
});
