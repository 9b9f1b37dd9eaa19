/**
 * `eos run` as a user runs it (headless, SSH forwarded to a chosen port, a
 * fresh swtpm TPM), for the vm tests that boot through the command itself.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { join } from "node:path";
import { freePort } from "../../src/io/machine/host.ts";
import { guestSshArgv } from "../../src/core/machine/qemu-machine.ts";
import { BOOT_TIMEOUT_MS } from "./vm.ts";
import { REPO } from "./vm-image.ts";

export interface EosRun {
  port: number;
  /** Runs argv in the guest (quoted for the guest's shell, as Vm.ssh does). */
  ssh(argv: string[]): { code: number; stdout: string };
  sshOk(argv: string[]): string;
  /** eos run's exit code, once the guest powered off. */
  exited: Promise<number | null>;
  stderr(): string;
  kill(): void;
}

export async function sha256File(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>)
    hash.update(chunk);
  return hash.digest("hex");
}

/** Starts `eos run RAW --headless --tpm` and returns once it says SSH answers. */
export async function startEosRun(raw: string, sshKey: string, work: string): Promise<EosRun> {
  const port = await freePort();
  const child = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      join(REPO, "src/bin/eos.ts"),
      "run",
      raw,
      "--headless",
      "--tpm",
      "--ssh-port",
      String(port),
      "--ssh-key",
      sshKey,
      "--wait-ssh",
      "--registry-size",
      "0",
      "--work",
      work,
    ],
    { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] },
  );
  let stderr = "";
  child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<number | null>((res) => child.once("close", (code) => res(code)));
  const ssh = (argv: string[]) => {
    const r = spawnSync("ssh", guestSshArgv(sshKey, port, argv, 10), { timeout: 120_000 });
    return { code: r.status ?? 255, stdout: r.stdout.toString() };
  };
  const run: EosRun = {
    port,
    ssh,
    sshOk: (argv) => {
      const r = ssh(argv);
      assert.equal(r.code, 0, `${argv.join(" ")}: exit ${r.code}`);
      return r.stdout;
    },
    exited,
    stderr: () => stderr,
    kill: () => child.kill("SIGKILL"),
  };
  const deadline = Date.now() + BOOT_TIMEOUT_MS;
  while (!/SSH answers after/.test(stderr)) {
    if (Date.now() > deadline) {
      run.kill();
      assert.fail(`eos run: no SSH within the timeout:\n${stderr}`);
    }
    if (child.exitCode !== null) assert.fail(`eos run exited early:\n${stderr}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
  return run;
}
