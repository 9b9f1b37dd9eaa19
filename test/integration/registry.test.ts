/**
 * The registry's host-side behaviour with real tools: refusals (file system,
 * LUKS header, too small, in use), luksFormat with the key on stdin and our
 * LUKS2 token, TPM sealing against swtpm (its own TCTI, no kernel TPM), and
 * the key opening the header (`cryptsetup --test-passphrase`: the host has no
 * device-mapper, so opening and mounting are proven in the vm tier).
 */
import { captureContext } from "../helpers/context.ts";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chmod, mkdir, mkdtemp, rm, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { readGpt, PartitionType } from "../../src/core/gpt.ts";
import { encodeGpt, usableRange } from "../../src/core/gpt-write.ts";
import { planGrow } from "../../src/core/registry/registry.ts";
import { flakeRegistryMain } from "../../src/cli/flake-registry.ts";
import { reportError } from "../../src/cli/main.ts";
import { openBlockSource } from "../../src/io/files.ts";
import { luksTokens } from "../../src/io/registry/luks.ts";
import { systemRunner } from "../../src/io/process.ts";
import { setupRegistry, setupWasCutShort, unlockKey } from "../../src/io/registry/registry.ts";
import { CRASH_ENV, CRASH_STEPS } from "../../src/io/crash-point.ts";
import { freePort } from "../../src/io/machine/host.ts";

const MiB = 1024 * 1024;
const have = (cmd: string) => spawnSync("sh", ["-c", 'command -v "$1"', "sh", cmd]).status === 0;
const toolsMissing = ["cryptsetup", "blkid", "mkfs.xfs", "wipefs"].find((c) => !have(c));
const tpmMissing = ["swtpm", "tpm2_createprimary"].find((c) => !have(c));
if (toolsMissing) process.stdout.write(`# registry integration skipped: ${toolsMissing} not installed\n`);

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "eos-registry-"));
});
after(async () => rm(dir, { recursive: true, force: true }));

async function blank(name: string, bytes: number): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, "");
  await truncate(path, bytes);
  return path;
}

function testCtx() {
  const { ctx, stdout, stderr } = captureContext({ root: dir });
  return { ctx, out: stdout, err: stderr };
}

async function cli(argv: string[]) {
  const t = testCtx();
  const code = await flakeRegistryMain(argv, t.ctx).catch((e: unknown) =>
    reportError(t.ctx, "flake-registry", e),
  );
  return { code, stdout: t.out(), stderr: t.err() };
}

const log = () => undefined;
const proc = systemRunner();

async function keyFile(name: string, bytes = 64): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, Buffer.alloc(bytes, name.length), { mode: 0o600 });
  await chmod(path, 0o600);
  return path;
}

function opens(device: string, key: Buffer): boolean {
  return (
    spawnSync("cryptsetup", ["open", "--test-passphrase", "--key-file=-", device], { input: key }).status ===
    0
  );
}

describe("flake-registry arguments", () => {
  test("exactly one action; --force only with --setup; --tpm excludes --key-file", async () => {
    for (const argv of [
      [],
      ["--stop", "--status"],
      ["--activate", "/dev/x", "--force"],
      ["--setup", "/x", "--tpm", "--key-file", "/k"],
    ]) {
      const r = await cli(argv);
      assert.equal(r.code, 2, `${argv.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, /error \[USAGE\]/);
    }
    const bad = await cli(["--setup", "/x", "--pcrs", "7,99"]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--pcrs 7,99/);
  });

  test("a device that does not exist is named", async () => {
    const r = await cli(["--setup", join(dir, "nope")]);
    assert.equal(r.code, 3);
    assert.match(r.stderr, /error \[NOT_FOUND\]: .*nope does not exist/);
  });
});

describe("flake-registry --setup refuses what it must not destroy", { skip: toolsMissing }, () => {
  test("a file system: says what it found, changes nothing", async () => {
    const dev = await blank("xfs.img", 320 * MiB);
    assert.equal(spawnSync("mkfs.xfs", ["-q", "-L", "precious", dev]).status, 0);
    const key = await keyFile("k1");
    const r = await cli(["--setup", dev, "--key-file", key]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /error \[REFUSED\]: .*xfs\.img holds a xfs file system labelled precious/);
    assert.match(r.stderr, /hint: .*--force/);
    assert.equal(
      spawnSync("blkid", ["-s", "LABEL", "-o", "value", dev]).stdout.toString().trim(),
      "precious",
    );
  });

  test("a LUKS header (an existing registry) and a device too small", async () => {
    const dev = await blank("luks.img", 320 * MiB);
    const k = await keyFile("k22");
    await setupRegistry(dev, { keyFile: k, mkfs: false, log, proc });
    const r = await cli(["--setup", dev, "--key-file", k]);
    assert.equal(r.code, 3);
    assert.match(r.stderr, /holds a LUKS2 header/);
    const small = await blank("small.img", 64 * MiB);
    const s = await cli(["--setup", small, "--key-file", k]);
    assert.equal(s.code, 3);
    assert.match(s.stderr, /small\.img is 64 MiB: the registry needs at least 316 MiB/);
  });

  test("key files must be private and long enough; no TPM and no key file: a clear error", async () => {
    const dev = await blank("kf.img", 320 * MiB);
    const open = join(dir, "open.key");
    await writeFile(open, Buffer.alloc(64, 1), { mode: 0o644 });
    await chmod(open, 0o644);
    assert.match(
      (await cli(["--setup", dev, "--key-file", open])).stderr,
      /readable by others.*\n.*chmod 600/,
    );
    const short = await keyFile("short", 8);
    assert.match((await cli(["--setup", dev, "--key-file", short])).stderr, /8 bytes: at least 32/);
    if (!spawnSync("test", ["-e", "/sys/class/tpm/tpm0"]).status) return; // this host has a TPM
    const r = await cli(["--setup", dev]);
    assert.equal(r.code, 3);
    assert.match(r.stderr, /error \[TPM\]: no TPM.*\n.*--key-file/);
    assert.equal(spawnSync("blkid", ["-p", dev]).status, 2, "still blank");
  });

  test("--force wipes (and only then) and formats with the key from the file", async () => {
    const dev = await blank("force.img", 320 * MiB);
    assert.equal(spawnSync("mkfs.xfs", ["-q", dev]).status, 0);
    const k = await keyFile("k333");
    const r = await setupRegistry(dev, { keyFile: k, force: true, mkfs: false, log, proc });
    assert.match(r.found ?? "", /xfs file system/);
    assert.equal(
      spawnSync("blkid", ["-p", "-s", "TYPE", "-o", "value", dev]).stdout.toString().trim(),
      "crypto_LUKS",
    );
    const tokens = await luksTokens(proc, dev);
    assert.deepEqual(
      tokens.map((t) => JSON.parse(t.json).type),
      ["eos-keyfile"],
    );
    const { key } = await unlockKey(dev, { keyFile: k, log, proc });
    assert.ok(opens(dev, key));
    assert.ok(!opens(dev, Buffer.alloc(64, 9)), "another key does not open it");
  });
});

describe("TPM-sealed keys (swtpm)", { skip: toolsMissing ?? tpmMissing }, () => {
  const tpms: ChildProcess[] = [];
  // The port is chosen before swtpm binds it (and its control channel takes the next one), so
  // another process can win the race: a swtpm that exits is started again on other ports.
  async function startTpm(name: string): Promise<string> {
    const state = join(dir, name);
    await mkdir(state, { recursive: true });
    let lastError = "";
    for (let attempt = 0; attempt < 4; attempt++) {
      const port = await freePort();
      const p = spawn(
        "swtpm",
        [
          "socket",
          "--tpm2",
          "--tpmstate",
          `dir=${state}`,
          "--server",
          `type=tcp,port=${port}`,
          "--ctrl",
          `type=tcp,port=${port + 1}`,
          "--flags",
          "not-need-init,startup-clear",
        ],
        { stdio: ["ignore", "ignore", "pipe"] },
      );
      tpms.push(p);
      let exited = false;
      p.once("exit", () => (exited = true));
      p.stderr?.on("data", (d: Buffer) => (lastError += d.toString()));
      const tcti = `swtpm:host=127.0.0.1,port=${port}`;
      // A loaded CI machine can take seconds to start it: wait up to 30 s per attempt.
      for (let i = 0; i < 150 && !exited; i++) {
        const r = spawnSync("tpm2_getrandom", ["--hex", "4"], {
          env: { ...process.env, TPM2TOOLS_TCTI: tcti },
        });
        if (r.status === 0) return tcti;
        await sleep(200);
      }
      p.kill();
    }
    throw new Error(`swtpm did not answer: ${lastError.trim()}`);
  }
  after(() => {
    for (const p of tpms) p.kill();
  });

  test("a fresh key sealed in the TPM opens the header; another TPM cannot unseal it and nothing changes", async () => {
    const tcti = await startTpm("tpm-a");
    const dev = await blank("tpm.img", 320 * MiB);
    const runDir = join(dir, "run");
    const r = await setupRegistry(dev, { provider: "tpm2", tpm: { tcti, runDir }, mkfs: false, log, proc });
    assert.equal(r.provider, "tpm2");
    const [token] = await luksTokens(proc, dev);
    const parsed = JSON.parse(token?.json ?? "{}");
    assert.equal(parsed.type, "eos-tpm2");
    assert.deepEqual(parsed.keyslots, ["0"]);
    const { key, provider } = await unlockKey(dev, { tpm: { tcti, runDir }, log, proc });
    assert.equal(provider, "tpm2");
    assert.equal(key.length, 64);
    assert.ok(opens(dev, key), "the unsealed key opens the LUKS header");
    assert.equal(
      spawnSync("ls", ["-A", runDir]).stdout.toString().trim(),
      "",
      "no context files left in /run",
    );

    const other = await startTpm("tpm-b");
    await assert.rejects(
      unlockKey(dev, { tpm: { tcti: other, runDir }, log, proc }),
      (e: Error & { code?: string }) => {
        assert.equal(e.code, "TPM");
        assert.match(e.message, /sealed by another TPM/);
        return true;
      },
    );
    assert.equal((await luksTokens(proc, dev)).length, 1);
    assert.ok(opens(dev, key));
  });

  test("bound to PCR 16: unseals until the PCR changes", async () => {
    const tcti = await startTpm("tpm-pcr");
    const env = { ...process.env, TPM2TOOLS_TCTI: tcti };
    const dev = await blank("pcr.img", 320 * MiB);
    const o = { tpm: { tcti, runDir: join(dir, "run") }, log, proc };
    await setupRegistry(dev, { ...o, provider: "tpm2", pcrs: [16], mkfs: false });
    assert.ok(opens(dev, (await unlockKey(dev, o)).key));
    assert.equal(spawnSync("tpm2_pcrextend", [`16:sha256=${"ab".repeat(32)}`], { env }).status, 0);
    await assert.rejects(unlockKey(dev, o), /refuses to unseal the registry key \(PCRs 16/);
  });
});

test(
  "growing p.spare: sgdisk agrees with the grown table",
  { skip: have("sgdisk") ? undefined : "sgdisk missing" },
  async () => {
    const disk = await blank("grow.img", 32 * MiB);
    const sg = (args: string[]) => spawnSync("sgdisk", args);
    assert.equal(
      sg(["-n", "1:2048:+4M", "-c", "1:p.UEFI", "-n", "2:0:+8M", "-c", "2:p.spare", disk]).status,
      0,
    );
    await truncate(disk, 64 * MiB);
    const src = await openBlockSource(disk, "r+");
    try {
      const { table, problems } = await readGpt(src);
      const plan = planGrow(table, src.size, !problems.some((p) => p.startsWith("backup:")));
      assert.ok(plan);
      for (const w of encodeGpt(plan.table, src.size))
        await src.handle.write(w.data, 0, w.data.length, w.offset);
    } finally {
      await src.close();
    }
    const v = sg(["-v", disk]);
    assert.equal(v.status, 0, v.stdout.toString());
    assert.match(v.stdout.toString(), /No problems found/);
    const info = sg(["-i", "2", disk]).stdout.toString();
    const last = Number(/Last sector: (\d+)/.exec(info)?.[1]);
    assert.equal(last + 1, Math.floor((usableRange(64 * MiB).lastUsableLba + 1) / 2048) * 2048);
    void PartitionType;
  },
);

describe("power cuts in the registry's set-up", { skip: toolsMissing }, () => {
  const SETUP_STEPS = ["registry:formatted", "registry:token", "registry:before-complete"] as const;
  const label = (dev: string) =>
    spawnSync("blkid", ["-p", "-s", "LABEL", "-o", "value", dev]).stdout.toString().trim();

  test("every registry crash step is walked here", () => {
    assert.deepEqual(
      CRASH_STEPS.filter((s) => s.startsWith("registry:")),
      [...SETUP_STEPS],
    );
  });

  for (const step of SETUP_STEPS) {
    test(`killed at ${step}: the header says the set-up is unfinished, and the next set-up takes it over`, async () => {
      const dev = await blank(`cut-${step.replace(/\W/g, "-")}.img`, 320 * MiB);
      const k = await keyFile(`kc-${step.replace(/\W/g, "-")}`);
      // A process of its own, so that the crash point's SIGKILL ends it (as a power cut ends the unit).
      const script = [
        `import { setupRegistry } from ${JSON.stringify(new URL("../../src/io/registry/registry.ts", import.meta.url).pathname)};`,
        `import { systemRunner } from ${JSON.stringify(new URL("../../src/io/process.ts", import.meta.url).pathname)};`,
        `await setupRegistry(${JSON.stringify(dev)}, { keyFile: ${JSON.stringify(k)}, mkfs: false, log: () => {}, proc: systemRunner() });`,
      ].join("\n");
      const r = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
        env: { ...process.env, [CRASH_ENV]: step },
      });
      assert.equal(r.signal, "SIGKILL", `the set-up reaches ${step}: ${r.stderr.toString()}`);
      assert.equal(label(dev), "eos-setup-incomplete");
      assert.equal(await setupWasCutShort(proc, dev), true);
      // By hand it is still a LUKS header: --setup says what it is and wants --force.
      const refused = await cli(["--setup", dev, "--key-file", k]);
      assert.equal(refused.code, 3);
      assert.match(refused.stderr, /holds a LUKS2 header labelled eos-setup-incomplete/);
      // What the boot does with it: set it up again, with a fresh header.
      await setupRegistry(dev, { keyFile: k, force: true, mkfs: false, log, proc });
      assert.equal(label(dev), "");
      assert.equal(await setupWasCutShort(proc, dev), false);
      assert.ok(opens(dev, (await unlockKey(dev, { keyFile: k, log, proc })).key));
    });
  }

  test("a finished set-up is never taken for a cut-short one", async () => {
    const dev = await blank("finished.img", 320 * MiB);
    const k = await keyFile("kfin");
    await setupRegistry(dev, { keyFile: k, mkfs: false, log, proc });
    assert.equal(label(dev), "");
    assert.equal(await setupWasCutShort(proc, dev), false);
  });
});
