/**
 * Both transports a device updates over, as the update tests need them: the
 * real server over HTTPS (a throwaway certificate, one device token, its
 * request log collected) and the SSH forced command behind a real sshd.
 */
import type { ChildProcess } from "node:child_process";
import { join } from "node:path";
import { DIST, runEos } from "./run.ts";
import { makeTestCert, startServer } from "./serve.ts";
import type { World } from "./server-world.ts";
import { startSshd, type Sshd } from "./sshd.ts";

export interface LoggedRequest {
  path: string;
  status: number;
  bytes: number;
  /** The request's Range header, when it had one. */
  range?: string;
}

export interface UpdateServers {
  server: ChildProcess;
  sshd: Sshd;
  url: string;
  token: string;
  cert: string;
  /** The server's request log lines, as they come (tests empty it between steps). */
  requests: LoggedRequest[];
  httpsConfig(name: string): string;
  sshConfig(name: string): string;
  stop(): void;
}

export async function startUpdateServers(world: World): Promise<UpdateServers> {
  const tls = await makeTestCert(world.dir);
  const tokens = join(world.dir, "tokens");
  const token = (
    await runEos("os-update-server", ["token", "add", "device-1", "--tokens-dir", tokens])
  ).stdout
    .toString()
    .trim();
  const running = await startServer({ config: world.config, tokensDir: tokens, tls });
  const requests: LoggedRequest[] = [];
  let buffer = "";
  running.child.stdout?.on("data", (s: Buffer | string) => {
    buffer += s.toString();
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = JSON.parse(buffer.slice(0, nl)) as LoggedRequest & { msg: string };
      buffer = buffer.slice(nl + 1);
      if (line.msg === "request") requests.push(line);
    }
  });
  const sshd = await startSshd(join(world.dir, "ssh"), [
    process.execPath,
    join(DIST, "os-update-server.mjs"),
    "restricted",
    "--images-dir",
    world.imagesDir,
  ]);
  return {
    server: running.child,
    sshd,
    url: running.url,
    token,
    cert: tls.cert,
    requests,
    httpsConfig: (name) => `update:\n  name: ${name}\n  url: ${running.url}\n  ca: ${tls.cert}\n`,
    sshConfig: (name) =>
      `update:\n  name: ${name}\n  server: root@127.0.0.1\n  port: ${sshd.port}\n  pkey: ${sshd.clientKey}\n  known_hosts: ${sshd.knownHosts}\n`,
    stop() {
      running.child.kill("SIGTERM");
      sshd.stop();
    },
  };
}
