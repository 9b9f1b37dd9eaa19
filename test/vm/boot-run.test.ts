/**
 * `eos run` as a user runs it: headless, SSH forwarded to a chosen port, a
 * swtpm TPM; the guest sees TPM 2.0, powers off, and `eos run` exits 0 with
 * the image untouched.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { freePort } from "../../src/io/machine/host.ts";
import { shellQuote } from "../../src/io/process.ts";
import { BOOT_TIMEOUT_MS } from "../helpers/vm.ts";
import { REPO, testImage, VM_TEST_IMAGE, vmSkipReason, VM_TMP } from "../helpers/vm-image.ts";

const skip =
  vmSkipReason() ??
  (spawnSync("sh", ["-c", "command -v swtpm"]).status === 0 ? undefined : "swtpm is not installed");

function ssh(key: string, port: number, command: string): { code: number; out: string } {
  const r = spawnSync(
    "ssh",
    [
      "-i",
      key,
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
      "-o",
      "ConnectTimeout=10",
      "root@127.0.0.1",
      "--",
      command,
    ],
    { timeout: 60_000 },
  );
  return { code: r.status ?? 255, out: r.stdout.toString() };
}

async function sha256(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>)
    hash.update(chunk);
  return hash.digest("hex");
}

test(
  "eos run --headless --tpm boots the image, forwards SSH and leaves the image untouched",
  { skip, timeout: 30 * 60_000 },
  async (t) => {
    const image = await testImage(VM_TEST_IMAGE);
    const before = await sha256(image.raw);
    await mkdir(join(VM_TMP, "run"), { recursive: true });
    const work = await mkdtemp(join(VM_TMP, "run", "eos-run-"));
    t.after(() => rm(work, { recursive: true, force: true }));
    const port = await freePort();
    const child = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        join(REPO, "src/bin/eos.ts"),
        "run",
        image.raw,
        "--headless",
        "--tpm",
        "--ssh-port",
        String(port),
        "--ssh-key",
        image.sshKey,
        "--wait-ssh",
        "--registry-size",
        "0",
        "--work",
        work,
      ],
      { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] },
    );
    t.after(() => child.kill("SIGKILL"));
    let stderr = "";
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<number | null>((res) => child.once("close", (code) => res(code)));
    const deadline = Date.now() + BOOT_TIMEOUT_MS;
    while (!/SSH answers after/.test(stderr)) {
      if (Date.now() > deadline) assert.fail(`eos run: no SSH within the timeout:\n${stderr}`);
      if (child.exitCode !== null) assert.fail(`eos run exited early:\n${stderr}`);
      await new Promise((r) => setTimeout(r, 1000));
    }
    assert.match(stderr, /under TCG|under KVM/);
    assert.match(stderr, new RegExp(`-p ${port} `));
    const tpm = ssh(image.sshKey, port, "cat /sys/class/tpm/tpm0/tpm_version_major");
    assert.equal(tpm.code, 0);
    assert.equal(tpm.out.trim(), "2");
    const hostname = ssh(image.sshKey, port, `cat ${shellQuote("/etc/hostname")}`);
    assert.equal(hostname.out.trim(), "eos");
    ssh(image.sshKey, port, "systemctl poweroff");
    assert.equal(await exited, 0, stderr);
    assert.match(stderr, /QEMU exited \(0\)/);
    const log = await readFile(join(work, "console.log"), "utf8");
    assert.match(log, /EOS: booting slot A/);
    assert.equal(await sha256(image.raw), before, "eos run never writes the image");
  },
);
