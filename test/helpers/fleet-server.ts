/**
 * The server side of a control-plane test: a config with the database (and
 * any extra YAML), a token per device, an operator and a viewer admin token,
 * and `os-update-server serve` over HTTPS with them.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { copyFile, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { request as httpsRequest } from "node:https";
import { join } from "node:path";
import { runEos } from "./run.ts";
import { makeTestCert, startServer, type RunningServer, type TestCert } from "./serve.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "./server-world.ts";
import { startPostgres, type Postgres } from "./postgres.ts";

export interface FleetServer {
  config: string;
  tokensDir: string;
  /** Device id → its bearer token. */
  tokens: Map<string, string>;
  /** EOS_ADMIN_TOKEN (operator), VIEWER (a viewer's token) and EOS_SERVER_URL for the admin CLI. */
  env: NodeJS.ProcessEnv;
  server: RunningServer;
  /** The fleet's enrolment key (`token add fleet --enrolment`), when asked for. */
  enrolmentKey?: string;
}

export async function startFleetServer(o: {
  world: World;
  dir: string;
  /** Extra top-level YAML for the config (e.g. `database: …`, a `serve:` map), or "". */
  extraConfig: string;
  deviceIds: readonly string[];
  tls: TestCert;
  enrolmentKey?: boolean;
}): Promise<FleetServer> {
  await mkdir(o.dir, { recursive: true });
  const config = join(o.dir, "os-update.yml");
  await writeFile(config, `${await readFile(o.world.config, "utf8")}${o.extraConfig}`);
  const tokensDir = join(o.dir, "tokens");
  const tokens = new Map<string, string>();
  for (const id of o.deviceIds) {
    const r = await runEos("os-update-server", ["token", "add", id, "--tokens-dir", tokensDir]);
    tokens.set(id, r.stdout.toString().trim());
  }
  const key = o.enrolmentKey
    ? await runEos("os-update-server", ["token", "add", "fleet", "--enrolment", "--tokens-dir", tokensDir])
    : undefined;
  assert.equal(key?.code ?? 0, 0, key?.stderr);
  const admin = (name: string, role: string) =>
    runEos("os-update-server", [
      "admin-token",
      "add",
      name,
      "--role",
      role,
      "--config",
      config,
      "--state-dir",
      join(o.dir, "state"),
    ]);
  const ops = await admin("ops", "operator");
  assert.equal(ops.code, 0, ops.stderr);
  const viewer = await admin("watcher", "viewer");
  const server = await startServer({ config, tokensDir, tls: o.tls });
  const env = {
    ...process.env,
    EOS_ADMIN_TOKEN: ops.stdout.toString().trim(),
    VIEWER: viewer.stdout.toString().trim(),
    EOS_SERVER_URL: server.url,
  };
  const enrolment = key ? { enrolmentKey: key.stdout.toString().trim() } : {};
  return { config, tokensDir, tokens, env, server, ...enrolment };
}

/** Stops the server and waits until it has exited (its database is closed). */
export async function stopServer(server: RunningServer): Promise<void> {
  const exited = once(server.child, "exit");
  server.stop();
  await exited;
}

export interface ReleaseManifest {
  version: string;
  partitions: { root: { sha256: string; size: number; data_bytes?: number } };
}

export interface FleetWorld {
  world: World;
  /** A copy of the 1.0.0 disk image, for devices to start from. */
  deviceImage: string;
  v1: ReleaseManifest;
  v2: ReleaseManifest;
  tls: TestCert;
  /** Undefined when PostgreSQL cannot start here; `pgUnavailable` says why. */
  pg: Postgres | undefined;
  pgUnavailable: string;
  close(): Promise<void>;
}

/** Image NAME released as 1.0.0 and 2.0.0 and fetched (the server serves 2.0.0), a TLS cert, a PostgreSQL. */
export async function makeFleetWorld(name: string, payloadBytes: number): Promise<FleetWorld> {
  const world = await makeWorld();
  await writeServerConfig(world, [{ image: `${world.origin.url}/${name}.raw.xz`, name }]);
  const manifestOf = async (path: string) =>
    JSON.parse(await readFile(`${path}.manifest.json`, "utf8")) as ReleaseManifest;
  // Each release replaces the last one's files at the origin: read and copy 1.0.0 before 2.0.0.
  const v1Path = await releaseImage(world, name, "1.0.0", { payloadBytes });
  const v1 = await manifestOf(v1Path);
  const deviceImage = join(world.dir, "device-v1.raw");
  await copyFile(v1Path, deviceImage);
  const v2Path = await releaseImage(world, name, "2.0.0", { payloadBytes });
  const fetched = await runEos("os-update-server", ["fetch", "--config", world.config]);
  assert.equal(fetched.code, 0, fetched.stderr);
  const started = await startPostgres();
  const pg = "unavailable" in started ? undefined : started;
  return {
    world,
    deviceImage,
    v1,
    v2: await manifestOf(v2Path),
    tls: await makeTestCert(world.dir),
    pg,
    pgUnavailable: "unavailable" in started ? started.unavailable : "",
    async close() {
      await pg?.stop();
      await world.origin.close();
      await rm(world.dir, { recursive: true, force: true });
    },
  };
}

/** A one-hour window twelve hours from now (UTC): closed for the whole test. */
export function closedWindow(): string {
  const now = new Date();
  const start = (now.getUTCHours() * 60 + now.getUTCMinutes() + 720) % 1440;
  const hhmm = (m: number) =>
    `${String(Math.floor(m / 60)).padStart(2, "0")}:${String(m % 60).padStart(2, "0")}`;
  return `${hhmm(start)}-${hhmm((start + 60) % 1440)}`;
}

/** One HTTPS request to the test server: status, headers and the body as text. */
export async function httpsCall(
  base: string,
  tls: TestCert,
  method: string,
  path: string,
  o: { token?: string; body?: unknown; headers?: Record<string, string> } = {},
): Promise<{ status: number; text: string; headers: Record<string, unknown> }> {
  const ca = await readFile(tls.cert);
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...o.headers };
    if (o.token) headers.authorization = `Bearer ${o.token}`;
    if (o.body !== undefined) headers["content-type"] = "application/json";
    const req = httpsRequest(`${base}${path}`, { method, ca, headers, agent: false }, (res) => {
      let text = "";
      res.setEncoding("utf8").on("data", (s: string) => (text += s));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text, headers: res.headers }));
    });
    req.on("error", reject);
    req.end(o.body === undefined ? undefined : typeof o.body === "string" ? o.body : JSON.stringify(o.body));
  });
}
