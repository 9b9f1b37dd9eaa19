/**
 * Issue 11 (hardening), findings 8 and 9 against a running update server:
 * bad percent-encoding in an image name is a 400 with a JSON error and no
 * error log line; a token file edited in place takes effect at once.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { request, type IncomingMessage } from "node:http";
import { mkdir, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { ChildProcess } from "node:child_process";
import { mustRun, runEos, startEos, waitForLog } from "../helpers/run.ts";
import { makeWorld, type World } from "../helpers/server-world.ts";

interface Reply {
  status: number;
  headers: IncomingMessage["headers"];
  body: string;
}

/** GET with the path sent exactly as given (no URL normalisation). */
function get(base: string, path: string, headers: Record<string, string>): Promise<Reply> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request(
      { host: u.hostname, port: u.port, path, method: "GET", headers, agent: false },
      (res) => {
        let body = "";
        res.setEncoding("utf8").on("data", (s: string) => (body += s));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end();
  });
}

let world: World;
let server: ChildProcess;
let base: string;
let token: string;
const logLines: Array<Record<string, unknown>> = [];
const tokensDir = () => join(world.dir, "tokens");
const auth = () => ({ authorization: `Bearer ${token}` });

before(async () => {
  world = await makeWorld();
  await writeFile(world.config, `update: []\nimages_dir: ${world.imagesDir}\n`);
  // An empty store, not a missing one: /health says 503 when the store cannot be listed.
  await mkdir(world.imagesDir, { recursive: true });
  const added = await runEos("os-update-server", ["token", "add", "device-1", "--tokens-dir", tokensDir()]);
  assert.equal(added.code, 0, added.stderr);
  token = added.stdout.toString().trim();
  server = startEos("os-update-server", [
    "serve",
    "--config",
    world.config,
    "--listen",
    "127.0.0.1",
    "--port",
    "0",
    "--tokens-dir",
    tokensDir(),
  ]);
  base = String((await waitForLog(server, "listening")).url);
  let buffer = "";
  server.stdout?.on("data", (s: string) => {
    buffer += s;
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      logLines.push(JSON.parse(buffer.slice(0, nl)) as Record<string, unknown>);
      buffer = buffer.slice(nl + 1);
    }
  });
});

after(async () => {
  server.kill("SIGTERM");
  await world.origin.close();
  await rm(world.dir, { recursive: true, force: true });
});

test("bad percent-encoding in an image name is a 400 with a JSON error, and no error is logged", async () => {
  for (const name of ["%", "%zz", "%C0%AE", "EOS%E0%A4%A", "%ED%A0%80"]) {
    for (const what of ["root", "manifest.json"]) {
      const r = await get(base, `/v1/images/${name}/${what}`, auth());
      assert.equal(r.status, 400, `${name}/${what}: ${r.body}`);
      assert.match(String(r.headers["content-type"]), /application\/json/);
      assert.match((JSON.parse(r.body) as { error: string }).error, /invalid image name/);
    }
  }
  const r = await get(base, "/health", {});
  assert.equal(r.status, 200, "the server is still up");
  await new Promise((resolve) => setTimeout(resolve, 200)); // let the last log lines arrive
  const requests = logLines.filter((l) => l.msg === "request" && String(l.path).startsWith("/v1/images/"));
  assert.equal(requests.length, 10, JSON.stringify(logLines));
  assert.deepEqual(
    logLines.filter((l) => l.level === "error"),
    [],
    "no error log lines",
  );
  assert.ok(requests.every((l) => l.status === 400 && l.level === "warn"));
});

test("a token file overwritten in place (directory mtime put back) refuses the old token", async () => {
  assert.equal((await get(base, "/v1/images", auth())).status, 200);
  const file = join(tokensDir(), "device-1");
  const dirStat = await stat(tokensDir(), { bigint: true });
  const other = randomBytes(32).toString("base64url");
  await writeFile(file, `${createHash("sha256").update(other).digest("hex")}\n`);
  const ns = dirStat.mtimeNs;
  await mustRun("touch", [
    "-m",
    "-d",
    `@${ns / 1_000_000_000n}.${String(ns % 1_000_000_000n).padStart(9, "0")}`,
    tokensDir(),
  ]);
  assert.equal((await stat(tokensDir(), { bigint: true })).mtimeNs, ns);
  assert.equal((await get(base, "/v1/images", auth())).status, 401);
});
