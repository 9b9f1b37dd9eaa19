import { makeTestCert, startServer } from "../helpers/serve.ts";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { copyFile, readFile, rm, truncate, writeFile, readlink } from "node:fs/promises";
import { join } from "node:path";
import type { ChildProcess } from "node:child_process";
import { DIST, runEos } from "../helpers/run.ts";
import { partitionBytes, flipByte } from "../helpers/sample-image.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";
import { makeDevice, type TestDevice } from "../helpers/device.ts";
import { encodeGrubenv } from "../../src/core/update/grubenv.ts";
import { startSshd, type Sshd } from "../helpers/sshd.ts";

const NAME = "EOS.x86_64-AB";
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

interface Manifest {
  version: string;
  partitions: { root: { sha256: string; size: number; verity?: { root_hash: string; data_blocks: number } } };
}

async function manifestOf(raw: string): Promise<Manifest> {
  return JSON.parse(await readFile(`${raw}.manifest.json`, "utf8")) as Manifest;
}

async function publish(world: World): Promise<void> {
  const r = await runEos("os-update-server", ["fetch", "--config", world.config]);
  assert.equal(r.code, 0, r.stderr);
}

/** The state a failed command must not change: which slot boots and what is on trial. */
async function bootState(device: TestDevice) {
  const env = await device.grubenv();
  return {
    default: env.get("eos_default"),
    trial: env.get("eos_trial"),
    tries: env.get("eos_tries"),
    A: env.get("eos_A_sha256"),
  };
}

describe("os-update: the full cycle over HTTPS and SSH", () => {
  let world: World;
  let server: ChildProcess;
  let sshd: Sshd;
  let url: string;
  let token: string;
  let v1: string;
  let v1Manifest: Manifest;
  let v2Manifest: Manifest;
  let cert: string;

  before(async () => {
    world = await makeWorld();
    await writeServerConfig(world, [{ image: `${world.origin.url}/${NAME}.raw.xz`, name: NAME }]);
    v1 = await releaseImage(world, NAME, "1.0.0", { payloadBytes: 12 * 1024 * 1024 });
    v1Manifest = await manifestOf(v1);
    await copyFile(v1, join(world.dir, "device-v1.raw"));
    // v2 as eos build makes it: the root under a dm-verity tree (v1 is an image from before).
    const v2 = await releaseImage(world, NAME, "2.0.0", { payloadBytes: 12 * 1024 * 1024, verity: true });
    v2Manifest = await manifestOf(v2);
    await publish(world);
    const tls = await makeTestCert(world.dir);
    cert = tls.cert;
    const tokens = join(world.dir, "tokens");
    token = (await runEos("os-update-server", ["token", "add", "device-1", "--tokens-dir", tokens])).stdout
      .toString()
      .trim();
    const running = await startServer({ config: world.config, tokensDir: tokens, tls });
    server = running.child;
    url = running.url;
    sshd = await startSshd(join(world.dir, "ssh"), [
      process.execPath,
      join(DIST, "os-update-server.mjs"),
      "restricted",
      "--images-dir",
      world.imagesDir,
    ]);
  });

  after(async () => {
    server?.kill("SIGTERM");
    sshd?.stop();
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  });

  const httpsConfig = () => `update:\n  name: ${NAME}\n  url: ${url}\n  ca: ${cert}\n  tries: 3\n`;
  const sshConfig = () =>
    `update:\n  name: ${NAME}\n  server: root@127.0.0.1\n  port: ${sshd.port}\n  pkey: ${sshd.clientKey}\n  known_hosts: ${sshd.knownHosts}\n`;

  for (const transport of ["https", "ssh"] as const) {
    test(`${transport}: check → apply → trial boot → commit → up to date → rollback`, async () => {
      const device = await makeDevice(join(world.dir, "device-v1.raw"), v1Manifest, {
        config: transport === "https" ? httpsConfig() : sshConfig(),
        keys: [join(world.keysDir, "release.pub")],
        token,
      });
      try {
        const check = await device.run(["--check"]);
        assert.equal(check.code, 1, check.stderr);
        assert.match(check.stdout, /update available: 1.0.0 → 2.0.0/);
        const json = await device.run(["--check", "--json"]);
        assert.deepEqual(JSON.parse(json.stdout).running.slot, "A");
        assert.equal(JSON.parse(json.stdout).update_available, true);

        const apply = await device.run(["--apply"]);
        assert.equal(apply.code, 0, apply.stderr);
        const slotB = await partitionBytes(device.image, "p.lxrootclone1");
        assert.equal(
          sha256(slotB.subarray(0, v2Manifest.partitions.root.size)),
          v2Manifest.partitions.root.sha256,
        );
        let env = await device.grubenv();
        assert.equal(env.get("eos_default"), "A", "default unchanged until commit");
        assert.equal(env.get("eos_trial"), "B");
        assert.equal(env.get("eos_tries"), "3");
        assert.equal(env.get("eos_B_version"), "2.0.0");
        assert.equal(env.get("eos_B_sha256"), v2Manifest.partitions.root.sha256);
        const verity = v2Manifest.partitions.root.verity;
        assert.ok(verity, "the signed manifest carries the slot's dm-verity root hash");
        assert.equal(env.get("eos_B_verity"), `${verity.root_hash}:${verity.data_blocks}`);
        assert.deepEqual(
          device.calls.map((c) => c.action),
          ["kexecLoad", "kexecExec"],
        );
        const load = device.calls[0]!;
        assert.equal(load.kernel, "kernel 2.0.0\n", "the kernel comes from the new slot");
        assert.equal(load.initrd, "initrd 2.0.0\n", "absolute initrd link resolved inside the new slot");
        assert.match(
          load.cmdline ?? "",
          new RegExp(
            `root=PARTUUID=${device.uuid.B.toLowerCase()} eos.slot=B eos.verity=${verity.root_hash}:${verity.data_blocks} COMMIT_UPDATE$`,
          ),
        );
        assert.match(load.cmdline ?? "", /^console=ttyS0 panic=10 /, "the rest of the command line is kept");

        // The kexec boot: the kernel runs slot B with COMMIT_UPDATE.
        await device.boot("B", "COMMIT_UPDATE");
        const upToDate = await device.run(["--check"]);
        assert.equal(upToDate.code, 0, upToDate.stderr);
        assert.match(upToDate.stdout, /up to date: 2.0.0 \(slot B\)/);

        const commit = await device.run(["--commit"]);
        assert.equal(commit.code, 0, commit.stderr);
        env = await device.grubenv();
        assert.equal(env.get("eos_default"), "B");
        assert.equal(env.get("eos_trial"), "");
        assert.equal((await device.run(["--commit"])).stdout.trim(), "slot B is already the default");

        // A normal boot of the committed slot: nothing to commit, still up to date.
        await device.boot("B");
        const envBytes = await readFile(join(device.esp, "EFI/BOOT/grubenv"));
        assert.match((await device.run(["--commit"])).stdout, /not a trial boot/);
        assert.deepEqual(
          await readFile(join(device.esp, "EFI/BOOT/grubenv")),
          envBytes,
          "no write on a plain boot",
        );
        assert.equal((await device.run(["--check"])).code, 0);
        // GRUB counted this boot as unconfirmed: --commit (the unit, once the system is up) confirms it.
        env.set("eos_unconfirmed", "2");
        await writeFile(join(device.esp, "EFI/BOOT/grubenv"), encodeGrubenv(env));
        assert.match((await device.run(["--commit"])).stdout, /slot B came up: boot confirmed/);
        assert.equal((await device.grubenv()).get("eos_unconfirmed"), "");
        env = await device.grubenv();

        const rollback = await device.run(["--rollback"]);
        assert.equal(rollback.code, 0, rollback.stderr);
        env = await device.grubenv();
        assert.equal(env.get("eos_default"), "A");
        await device.boot("A");
        const again = await device.run(["--check"]);
        assert.equal(again.code, 1, "after rolling back, v2 is offered again");
      } finally {
        await device.close();
      }
    });
  }

  test("--read FILE alone: the original's raw dump (sudo cat …/os-images/FILE): disk image, root, firmware", async () => {
    const raw = join(world.imagesDir, `${NAME}.raw`);
    const ssh = [
      "--server",
      "root@127.0.0.1",
      "--pkey",
      sshd.clientKey,
      "--port",
      String(sshd.port),
      "--known-hosts",
      sshd.knownHosts,
    ];
    // The original `os-update --read NAME` sends `sudo cat /srv/www/fleet/os-images/NAME`: the whole published disk image.
    for (const file of [NAME, `${NAME}.raw`]) {
      const disk = await runEos("os-update", ["--read", file, ...ssh]);
      assert.equal(disk.code, 0, disk.stderr);
      assert.ok(disk.stdout.equals(await readFile(raw)), `--read ${file} is the disk image`);
    }
    const root = await runEos("os-update", ["--read", `${NAME}.raw.dev`, ...ssh]);
    assert.equal(root.code, 0, root.stderr);
    assert.ok(root.stdout.equals(await partitionBytes(raw, "p.lxreadonly")));
    const fw = await runEos("os-update", ["--read", `${NAME}.raw.firmware`, ...ssh]);
    assert.ok(fw.stdout.equals(await partitionBytes(raw, "p.UEFI")));
    const missing = await runEos("os-update", ["--read", "Missing", ...ssh]);
    assert.equal(missing.code, 3);
    assert.match(missing.stderr, /not published/);
    const hostile = await runEos("os-update", ["--read", "../../etc/shadow", ...ssh]);
    assert.equal(hostile.code, 2);
  });

  test("--read NAME --server --pkey next to --check/--commit: the image and transport, not a dump (and --chec works)", async () => {
    // os-update.yml says HTTPS and another name; the original's command line wins.
    const device = await makeDevice(join(world.dir, "device-v1.raw"), v1Manifest, {
      config: `update:\n  name: Other\n  url: https://127.0.0.1:1/\n`,
      keys: [join(world.keysDir, "release.pub")],
      token,
    });
    const ssh = [
      "--read",
      NAME,
      "--server",
      "root@127.0.0.1",
      "--pkey",
      sshd.clientKey,
      "--port",
      String(sshd.port),
      "--known-hosts",
      sshd.knownHosts,
    ];
    try {
      const check = await device.run(["--check", ...ssh]);
      assert.equal(check.code, 1, `exit 1 = update available, not a dump's 0: ${check.stderr}`);
      assert.match(check.stdout, /update available: 1.0.0 → 2.0.0/);
      // A dump would be the whole image (megabytes, NULs); the plan is two lines of text.
      assert.ok(check.stdout.length < 1024 && !check.stdout.includes("\0"), "no raw stream on stdout");
      // getopt_long's unique prefixes, as the original script's users typed them.
      const short = await device.run(["--chec", "--rea", NAME, ...ssh.slice(2)]);
      assert.equal(short.code, 1, short.stderr);
      assert.match(short.stdout, /update available/);
      const ambiguous = await device.run(["--c"]);
      assert.equal(ambiguous.code, 2);
      assert.match(ambiguous.stderr, /--c is ambiguous: --check, --commit, --config/);
      const commit = await device.run(["--commit", ...ssh]);
      assert.equal(commit.code, 0, commit.stderr);
      assert.match(commit.stdout, /not a trial boot/);
      const two = await device.run(["--check", "--apply", ...ssh]);
      assert.equal(two.code, 2);
    } finally {
      await device.close();
    }
  });

  describe("refusals leave the running slot and the boot control block as they were", () => {
    let device: TestDevice;
    before(async () => {
      device = await makeDevice(join(world.dir, "device-v1.raw"), v1Manifest, {
        config: httpsConfig(),
        keys: [join(world.keysDir, "release.pub")],
        token,
      });
    });
    after(async () => device.close());

    const refuse = async (args: string[], code: RegExp, config?: string) => {
      if (config !== undefined) await writeFile(join(device.root, "etc/os-update.yml"), config);
      const before = await bootState(device);
      const slotA = sha256(await partitionBytes(device.image, "p.lxreadonly"));
      device.calls.length = 0;
      const r = await device.run(args);
      assert.equal(r.code, 3, `${args.join(" ")}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, code);
      assert.deepEqual(await bootState(device), { ...before, trial: "", tries: "0" });
      assert.equal(before.trial, "");
      assert.equal(
        sha256(await partitionBytes(device.image, "p.lxreadonly")),
        slotA,
        "running slot untouched",
      );
      assert.deepEqual(device.calls, [], "no kexec, no reboot");
      await writeFile(join(device.root, "etc/os-update.yml"), httpsConfig());
      return r;
    };

    test("a wrong token (401)", async () => {
      await writeFile(join(device.root, "run/eos/fleet-token"), "not-the-token-at-all");
      await refuse(["--apply"], /AUTH.*refused this device's token/);
      await writeFile(join(device.root, "run/eos/fleet-token"), token);
    });

    test("an unreachable server", async () => {
      await refuse(
        ["--apply"],
        /NETWORK.*ECONNREFUSED/,
        `update:\n  name: ${NAME}\n  url: https://127.0.0.1:9\n`,
      );
    });

    test("a missing configuration", async () => {
      await rm(join(device.root, "etc/os-update.yml"));
      await refuse(["--check"], /CONFIG.*os-update.yml: cannot read/);
    });

    test("an invalid configuration names the key", async () => {
      await refuse(
        ["--apply"],
        /CONFIG.*update\.tries/,
        `update:\n  name: ${NAME}\n  url: ${url}\n  tries: lots\n`,
      );
    });

    test("a manifest signed by a key the device does not trust", async () => {
      await writeFile(
        join(device.root, "usr/share/eos/keys/release-0.pub"),
        await readFile(join(world.otherKeysDir, "release.pub")),
      );
      await refuse(["--apply"], /SIGNATURE.*not signed by a trusted key/);
      await copyFile(
        join(world.keysDir, "release.pub"),
        join(device.root, "usr/share/eos/keys/release-0.pub"),
      );
    });

    test("a root stream with a byte flipped after the first 10 MB", async () => {
      const raw = join(world.imagesDir, await readlink(join(world.imagesDir, `${NAME}.raw`)));
      const rootOffset = 2048 * 512 + 8 * 1024 * 1024;
      await flipByte(raw, rootOffset + 11 * 1024 * 1024);
      try {
        const r = await refuse(["--apply"], /HASH_MISMATCH/);
        assert.match(r.stderr, /signed manifest says/);
        const env = await device.grubenv();
        assert.equal(env.get("eos_B_sha256"), "", "the half-written slot is marked invalid");
      } finally {
        await flipByte(raw, rootOffset + 11 * 1024 * 1024);
      }
    });

    test("a truncated stream (the server's file ends early, retries run out)", async () => {
      const raw = join(world.imagesDir, await readlink(join(world.imagesDir, `${NAME}.raw`)));
      const saved = await readFile(raw);
      await truncate(raw, 2048 * 512 + 8 * 1024 * 1024 + 5 * 1024 * 1024);
      try {
        await refuse(["--apply"], /TRUNCATED|NETWORK|short read|socket hang up|broke off/);
      } finally {
        await writeFile(raw, saved);
      }
    });

    test("a running root that is not on a known slot", async () => {
      await writeFile(
        join(device.root, "proc/cmdline"),
        "root=PARTUUID=00000000-1111-2222-3333-444444444444 quiet\n",
      );
      await refuse(["--apply"], /SLOT.*has no device/);
      await device.boot("A");
    });
  });
});

describe("os-update: firmware, offline disks and unsigned images", () => {
  let world: World;
  let server: ChildProcess;
  let url: string;
  let v1: string;
  let v1Manifest: Manifest;

  before(async () => {
    world = await makeWorld();
    await writeServerConfig(world, [
      { image: `${world.origin.url}/${NAME}.raw.xz`, name: NAME },
      { image: `${world.origin.url}/Unsigned.raw.xz`, name: "Unsigned", insecure: true },
    ]);
    v1 = await releaseImage(world, NAME, "1.0.0");
    v1Manifest = await manifestOf(v1);
    await copyFile(v1, join(world.dir, "device-v1.raw"));
    await releaseImage(world, NAME, "2.0.0");
    await releaseImage(world, "Unsigned", "9.0.0");
    await publish(world);
    const running = await startServer({ config: world.config });
    server = running.child;
    url = running.url;
  });
  after(async () => {
    server?.kill("SIGTERM");
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  });

  test("--firmware replaces the firmware files, keeps EFI/ and the boot control block, drops stale files", async () => {
    const device = await makeDevice(join(world.dir, "device-v1.raw"), v1Manifest, {
      config: `update:\n  name: ${NAME}\n  url: ${url}\n`,
      keys: [join(world.keysDir, "release.pub")],
    });
    try {
      await writeFile(join(device.esp, "fw.txt"), "firmware for 1.0.0\n");
      await writeFile(join(device.esp, "stale.bin"), "old blob\n");
      await writeFile(join(device.esp, "EFI/BOOT/BOOTX64.EFI"), "the running OS's loader\n");
      const grubenv = await readFile(join(device.esp, "EFI/BOOT/grubenv"));
      const r = await device.run(["--firmware"]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(await readFile(join(device.esp, "fw.txt"), "utf8"), "firmware for 2.0.0\n");
      assert.equal(
        await readFile(join(device.esp, "EFI/BOOT/BOOTX64.EFI"), "utf8"),
        "the running OS's loader\n",
      );
      assert.ok((await readFile(join(device.esp, "EFI/BOOT/grubenv"))).equals(grubenv));
      await assert.rejects(readFile(join(device.esp, "stale.bin")));
      assert.match(r.stdout, /1 files written, 1 removed; EFI\/ kept/);
    } finally {
      await device.close();
    }
  });

  test("--root-device with --esp updates a disk that is not running: stops after marking the trial slot", async () => {
    const device = await makeDevice(join(world.dir, "device-v1.raw"), v1Manifest, {
      config: `update:\n  name: ${NAME}\n  url: ${url}\n`,
      keys: [join(world.keysDir, "release.pub")],
    });
    try {
      // No running system: no /proc/cmdline says anything about this disk.
      await writeFile(join(device.root, "proc/cmdline"), "quiet\n");
      const offline = ["--root-device", device.image, "--esp", device.esp];
      assert.equal((await device.run(["--check", ...offline])).code, 1);
      const r = await device.run(["--apply", ...offline]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /boots 2.0.0 on trial at its next start/);
      assert.deepEqual(device.calls, [], "no kexec, no reboot for a disk that is not running");
      const env = await device.grubenv();
      assert.equal(env.get("eos_trial"), "B");
      assert.equal(env.get("eos_default"), "A");
      const commit = await device.run(["--commit", ...offline]);
      assert.equal(commit.code, 0, commit.stderr);
      assert.equal((await device.grubenv()).get("eos_default"), "B");
      assert.equal((await device.run(["--check", ...offline])).code, 0, "now up to date");
      const missingEsp = await device.run(["--apply", "--root-device", device.image]);
      assert.equal(missingEsp.code, 2);
      assert.match(missingEsp.stderr, /--root-device needs --esp/);
    } finally {
      await device.close();
    }
  });

  test("an image the server published unsigned (insecure: true) is refused by the device", async () => {
    const device = await makeDevice(join(world.dir, "device-v1.raw"), v1Manifest, {
      config: `update:\n  name: Unsigned\n  url: ${url}\n`,
      keys: [join(world.keysDir, "release.pub")],
    });
    try {
      const before = await device.grubenv();
      const r = await device.run(["--apply"]);
      assert.equal(r.code, 3);
      assert.match(r.stderr, /NOT_FOUND.*manifest.json.sig/);
      assert.deepEqual(await device.grubenv(), before);
    } finally {
      await device.close();
    }
  });
});
