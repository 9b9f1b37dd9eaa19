/** A real OpenSSH sshd on a loopback port, with one key bound to a forced command. */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdir, writeFile, readFile, chmod } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { mustRun, run, type RunResult } from "./run.ts";

export interface Sshd {
  port: number;
  clientKey: string;
  /** known_hosts file that pins this sshd's host key. */
  knownHosts: string;
  ssh(command: string, input?: Buffer): Promise<RunResult>;
  stop(): void;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const address = s.address();
      const port = typeof address === "object" && address ? address.port : 0;
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

export async function startSshd(dir: string, forcedCommand: string[]): Promise<Sshd> {
  await mkdir(dir, { recursive: true });
  await mkdir("/run/sshd", { recursive: true, mode: 0o755 });
  const hostKey = join(dir, "host_ed25519");
  const clientKey = join(dir, "client_ed25519");
  await mustRun("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", hostKey]);
  await mustRun("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", clientKey]);
  const pub = (await readFile(`${clientKey}.pub`, "utf8")).trim();
  const command = forcedCommand.map((a) => a.replace(/(["\\])/g, "\\$1")).join(" ");
  const authorized = join(dir, "authorized_keys");
  await writeFile(authorized, `command="${command}",restrict ${pub}\n`);
  await chmod(authorized, 0o600);
  const port = await freePort();
  const config = join(dir, "sshd_config");
  await writeFile(
    config,
    [
      `Port ${port}`,
      "ListenAddress 127.0.0.1",
      `HostKey ${hostKey}`,
      `AuthorizedKeysFile ${authorized}`,
      `PidFile ${join(dir, "sshd.pid")}`,
      "StrictModes no",
      "UsePAM no",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "PermitRootLogin prohibit-password",
      "LogLevel ERROR",
      "",
    ].join("\n"),
  );
  const child: ChildProcess = spawn("/usr/sbin/sshd", ["-D", "-e", "-f", config], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr?.setEncoding("utf8").on("data", (s: string) => (stderr += s));
  const sshArgs = (command: string) => [
    "-i",
    clientKey,
    "-p",
    String(port),
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "LogLevel=ERROR",
    "root@127.0.0.1",
    command,
  ];
  // Wait until sshd accepts connections.
  for (let i = 0; i < 50; i++) {
    const probe = await run("ssh", sshArgs("test -e /nonexistent/x.raw"));
    if (probe.code !== 255) break;
    if (child.exitCode !== null) throw new Error(`sshd exited: ${stderr}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const knownHosts = join(dir, "known_hosts");
  await writeFile(knownHosts, `[127.0.0.1]:${port} ${(await readFile(`${hostKey}.pub`, "utf8")).trim()}\n`);
  return {
    port,
    clientKey,
    knownHosts,
    ssh: (cmd, input) => run("ssh", sshArgs(cmd), input === undefined ? {} : { input }),
    stop: () => child.kill("SIGTERM"),
  };
}
