/**
 * The server side of a control-plane test: a config with the database (and
 * any extra YAML), a token per device, an operator and a viewer admin token,
 * and `os-update-server serve` over HTTPS with them.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { runEos } from "./run.ts";
import { startServer, type RunningServer, type TestCert } from "./serve.ts";
import type { World } from "./server-world.ts";

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
