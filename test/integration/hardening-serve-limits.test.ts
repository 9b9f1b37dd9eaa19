/**
 * Slow and greedy readers do not hold the update server (issue 11, finding
 * 4): a global cap on streams (503), a per-device cap (429), a reader that
 * stops taking bytes is dropped after the stall window and its slot is free
 * again, and a normal client is served in full meanwhile.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { request, type IncomingMessage } from "node:http";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { runEos } from "../helpers/run.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";
import { partitionBytes } from "../helpers/sample-image.ts";
import { startServer, type RunningServer } from "../helpers/serve.ts";

const NAME = "EOS.x86_64-AB";

function open(url: string, token: string): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers: { authorization: `Bearer ${token}` }, agent: false }, resolve);
    req.on("error", reject);
    req.end();
  });
}

async function readAll(res: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of res as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

describe("update server: stream caps and stalled readers", () => {
  let world: World;
  let server: RunningServer;
  const tokens: Record<string, string> = {};
  let root: Buffer;
  const log: Array<Record<string, unknown>> = [];

  before(async () => {
    world = await makeWorld();
    await writeServerConfig(
      world,
      [{ image: `${world.origin.url}/${NAME}.raw.xz`, name: NAME }],
      "serve: {max_streams: 3, max_streams_per_device: 2, stall: 2s, stall_bytes: 65536}\n",
    );
    const raw = await releaseImage(world, NAME, "1.0.0", { rootSizeMiB: 48, payloadBytes: 40 * 1024 * 1024 });
    assert.equal((await runEos("os-update-server", ["fetch", "--config", world.config])).code, 0);
    root = await partitionBytes(join(world.imagesDir, `${NAME}.raw`), "p.lxreadonly");
    assert.ok(root.length > 0 && raw);
    const dir = join(world.dir, "tokens");
    for (const d of ["d1", "d2"])
      tokens[d] = (await runEos("os-update-server", ["token", "add", d, "--tokens-dir", dir])).stdout
        .toString()
        .trim();
    server = await startServer({ config: world.config, tokensDir: dir });
    server.child.stdout?.setEncoding("utf8").on("data", (s: string) => {
      for (const line of s.split("\n").filter(Boolean)) log.push(JSON.parse(line) as Record<string, unknown>);
    });
  });
  after(async () => {
    server?.stop();
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  });

  test("caps: 429 beyond a device's streams, 503 beyond the server's; a stalled reader is dropped and its slot freed", async () => {
    const url = `${server.url}/v1/images/${NAME}/root`;
    // Two streams of d1 that never read: the per-device cap is then reached.
    const paused = [await open(url, tokens.d1 as string), await open(url, tokens.d1 as string)];
    for (const res of paused) {
      assert.equal(res.statusCode, 200);
      res.pause();
    }
    const third = await open(url, tokens.d1 as string);
    assert.equal(third.statusCode, 429);
    assert.ok(third.headers["retry-after"]);
    assert.match((await readAll(third)).toString(), /at most 2/);
    // d2 takes the last of the server's three streams; its second is over the global cap.
    const d2 = await open(url, tokens.d2 as string);
    assert.equal(d2.statusCode, 200);
    d2.pause();
    const over = await open(url, tokens.d2 as string);
    assert.equal(over.statusCode, 503);
    assert.ok(over.headers["retry-after"]);
    await readAll(over);
    // The readers that never read are dropped once a stall window passes without progress, and
    // their slots are free again (a paused client does not notice: its socket reads nothing).
    const t = performance.now();
    let full: IncomingMessage | undefined;
    while (performance.now() - t < 30_000) {
      const next = await open(url, tokens.d1 as string);
      if (next.statusCode === 200) {
        full = next;
        break;
      }
      assert.ok([429, 503].includes(next.statusCode ?? 0), `still capped: ${next.statusCode}`);
      await readAll(next);
      await new Promise((r) => setTimeout(r, 250));
    }
    const seconds = (performance.now() - t) / 1000;
    assert.ok(full, "a stalled reader's slot is freed");
    assert.ok(seconds < 20, `freed after ${seconds.toFixed(1)} s`);
    // A normal client of d1 gets every byte meanwhile.
    assert.ok((await readAll(full)).equals(root), "a normal client is served in full");
    const gone = log.filter((l) => l.msg === "request" && /^dropped: /.test(String(l.error)));
    assert.ok(gone.length >= 2, `the dropped streams are logged (${gone.length})`);
    for (const res of [...paused, d2]) res.destroy();
    assert.ok(
      !log.some((l) => l.level === "error"),
      `no server errors: ${JSON.stringify(log.filter((l) => l.level === "error"))}`,
    );
  });
});
