/**
 * VM flakes for real: the QEMU engine under TCG (no Firecracker here) boots
 * the small KIS image built by test/helpers/kis.ts (Debian cloud kernel,
 * busybox + bash root, sci). flake-ctl and the pilot run from their bundles
 * with a flakes.yml, image store and ids dir in a temporary directory.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bundleBin, run } from "../helpers/podman-fixture.ts";
import { buildKisImage, kisSkipReason, makeKisTarball, type KisImage } from "../helpers/kis.ts";

const skip = kisSkipReason();

function qemuPids(marker: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, "utf8").includes(marker)) pids.push(Number(entry));
    } catch {
      // gone
    }
  }
  return pids;
}

function taps(): string[] {
  return readdirSync("/sys/class/net").filter((n) => /^fc[0-9a-f]{10}$/.test(n));
}

describe("VM flakes (QEMU engine, TCG)", { skip }, () => {
  let dir: string;
  let kis: KisImage;
  let flakeCtl: string;
  let env: NodeJS.ProcessEnv;
  let images: string;
  let ids: string;
  const app = (name: string) => join(dir, "bin", name);
  const ctl = (args: string[], e: NodeJS.ProcessEnv = env) => run(flakeCtl, args, { env: e });
  const call = (name: string, args: string[] = [], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}) =>
    run(app(name), args, { env: opts.env ?? env, input: opts.input ?? "" });

  before(async () => {
    kis = buildKisImage();
    dir = mkdtempSync(join(tmpdir(), "eos-vm-flake-"));
    const binDir = join(dir, "dist");
    mkdirSync(binDir);
    const pilot = await bundleBin("firecracker-pilot", binDir);
    flakeCtl = await bundleBin("flake-ctl", binDir);
    images = join(dir, "images");
    ids = join(dir, "ids");
    writeFileSync(
      join(dir, "flakes.yml"),
      `generic:\n  flakes_dir: ${join(dir, "flakes")}\n  firecracker_ids_dir: ${ids}\n  firecracker_pilot: ${pilot}\n`,
    );
    const base = { ...process.env };
    delete base.PILOT_DEBUG;
    delete base.FLAKE_VM_ENGINE;
    env = {
      ...base,
      FLAKES_CONFIG: join(dir, "flakes.yml"),
      EOS_FIRECRACKER_IMAGES_DIR: images,
      EOS_FLAKES_CACHE_DIR: join(dir, "cache"),
      FLAKE_ALLOW_INSECURE_TRANSPORT: "1",
      // KVM does not work on the CI machines; skip the probe (it is cached per boot anyway).
      EOS_QEMU_ACCEL: "tcg",
    };
  });

  after(() => {
    for (const pid of qemuPids(dir)) process.kill(pid, "SIGKILL");
    if (dir && !process.env.EOS_VM_KEEP) rmSync(dir, { recursive: true, force: true });
  });

  test("the seed's example: pull the KIS image, register mybash on it, call it", async () => {
    const pull = await ctl(["firecracker", "pull", "--name", "leap", "--kis-image", kis.tarball]);
    assert.equal(pull.status, 0, pull.stderr);
    assert.match(pull.stdout, /sha256 verified: .*ext4.*kernel.*initrd/);
    for (const f of ["rootfs", "kernel", "initrd"]) assert.ok(existsSync(join(images, "leap", f)), f);

    const reg = await ctl([
      "firecracker",
      "register",
      "--vm",
      "leap",
      "--app",
      app("mybash"),
      "--target",
      "/bin/bash",
      "--overlay-size",
      "20GiB",
    ]);
    assert.equal(reg.status, 0, reg.stderr);
    assert.ok(lstatSync(app("mybash")).isSymbolicLink());
    assert.match(readlinkSync(app("mybash")), /firecracker-pilot\.mjs$/);
    const yaml = readFileSync(join(dir, "flakes", "mybash.yaml"), "utf8");
    assert.match(yaml, /^vm:\n {2}name: leap\n {2}target_app_path: \/bin\/bash\n/);
    assert.match(yaml, /overlay_size: 20GiB/);

    const version = await call("mybash", ["--version"]);
    assert.equal(version.status, 0, version.stderr);
    assert.match(version.stdout, /^GNU bash, version /);
  });

  test("mybash -c 'exit 7' returns 7; stdout and stderr arrive apart", async () => {
    const r = await call("mybash", ["-c", "echo to-stdout; echo to-stderr >&2; echo more; exit 7"]);
    assert.equal(r.status, 7, r.stderr);
    assert.equal(r.stdout, "to-stdout\nmore\n");
    assert.equal(r.stderr, "to-stderr\n");
  });

  test("stdin is piped into the app, binary-safe and in full", async () => {
    const input = `${"hello vm\n".repeat(20000)}end`;
    const r = await call("mybash", ["-c", "tr a-z A-Z; echo; wc -c < /dev/null; df -k / | tail -1"], {
      input,
    });
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.split("\n");
    assert.equal(lines.slice(0, 20000).join("\n"), "HELLO VM\n".repeat(20000).trimEnd());
    assert.equal(lines[20000], "END");
    // the root is the overlay of the 20GiB drive
    assert.match(r.stdout, /overlay\s+2\d{7}/);
    // nothing of the throwaway VM is left
    assert.deepEqual(qemuPids(join(ids, "0", "vm", "mybash.run")), []);
    assert.deepEqual(
      readdirSync(join(ids, "0", "vm")).filter((f) => f.includes(".run-")),
      [],
    );
  });

  test("a resume VM answers a second call without booting again; %remove stops it", async () => {
    const reg = await ctl([
      "firecracker",
      "register",
      "--vm",
      "leap",
      "--app",
      app("counter"),
      "--target",
      "/usr/bin/counter",
      "--resume",
      "--overlay-size",
      "64MiB",
    ]);
    assert.equal(reg.status, 0, reg.stderr);
    const t0 = Date.now();
    const first = await call("counter");
    const cold = Date.now() - t0;
    assert.equal(first.status, 0, first.stderr);
    const t1 = Date.now();
    const second = await call("counter");
    const resumed = Date.now() - t1;
    assert.equal(second.status, 0, second.stderr);
    const boot = (s: string) => /boot=(\S+)/.exec(s)?.[1];
    assert.match(first.stdout, /^count=1 /);
    assert.match(second.stdout, /^count=2 /, "the VM (and its overlay) kept the first call's state");
    assert.equal(boot(second.stdout), boot(first.stdout), "same kernel boot: no new VM");
    assert.equal(qemuPids(join(ids, "0", "vm", "counter", "sci.sock")).length, 1);
    process.stdout.write(`# resume: first call ${cold} ms (boot), second ${resumed} ms\n`);

    // another instance (@NAME) is another VM
    const other = await call("counter", ["@other"]);
    assert.match(other.stdout, /^count=1 /);
    assert.notEqual(boot(other.stdout), boot(first.stdout));
    const removeOther = await call("counter", ["@other", "%remove"]);
    assert.match(removeOther.stdout, /^count=2 /);
    assert.equal(existsSync(join(ids, "0", "vm", "counter@other")), false);

    const third = await call("counter", ["%remove"]);
    assert.match(third.stdout, /^count=3 /);
    assert.deepEqual(qemuPids(join(ids, "0", "vm", "counter")), []);
    assert.equal(existsSync(join(ids, "0", "vm", "counter")), false);
  });

  test("a signal to the pilot reaches the app; exit code 128+n as podman", async () => {
    const reg = await ctl([
      "firecracker",
      "register",
      "--vm",
      "leap",
      "--app",
      app("wait-int"),
      "--target",
      "/usr/bin/wait-int",
      "--no-net",
    ]);
    assert.equal(reg.status, 0, reg.stderr);
    const child = spawn(app("wait-int"), [], { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    let interrupted = false;
    child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
    const code = await new Promise<number | null>((resolve) => {
      child.stdout.on("data", (b: Buffer) => {
        stdout += b.toString();
        // One Ctrl-C: the next data event ("got-int") must not send a second one.
        if (!interrupted && stdout.includes("ready")) {
          interrupted = true;
          child.kill("SIGINT");
        }
      });
      child.on("close", (c) => resolve(c));
    });
    assert.equal(code, 130, stderr);
    assert.equal(stdout, "ready\ngot-int\n");
  });

  test("bad input: clear errors, nothing pulled or registered half, no VM, overlay or tap left", async () => {
    const before = readdirSync(images).sort();
    // Small stand-ins: these pulls fail before anything boots.
    const kernel = Buffer.from("not really a kernel");
    const rootfs = Buffer.alloc(4096, 1);
    const noKernel = makeKisTarball(join(dir, "nokernel.tar.xz"), { "x.ext4": rootfs });
    let r = await ctl(["firecracker", "pull", "--name", "bad1", "--kis-image", noKernel]);
    assert.equal(r.status, 3);
    assert.match(r.stderr, /error \[VM\]: .*nokernel\.tar\.xz: the KIS image has no kernel/);
    const noRoot = makeKisTarball(join(dir, "noroot.tar.xz"), { "x.kernel": kernel });
    r = await ctl(["firecracker", "pull", "--name", "bad2", "--kis-image", noRoot]);
    assert.match(r.stderr, /has no root file system image/);
    const badSum = makeKisTarball(join(dir, "badsum.tar.xz"), {
      "x.ext4": rootfs,
      "x.kernel": kernel,
      "x.sha256": `${"0".repeat(64)}  x.kernel\n`,
    });
    r = await ctl(["firecracker", "pull", "--name", "bad3", "--kis-image", badSum]);
    assert.match(
      r.stderr,
      /error \[HASH_MISMATCH\]: .*x\.kernel has sha256 [0-9a-f]{64}, x\.sha256 says 0{64}/,
    );
    // replacing an image with a broken one keeps the old one
    r = await ctl(["firecracker", "pull", "--name", "leap", "--force", "--kis-image", badSum]);
    assert.notEqual(r.status, 0);
    assert.ok(existsSync(join(images, "leap", "initrd")), "the pulled image is untouched");
    r = await ctl(["firecracker", "pull", "--name", "bad4", "--kis-image", kis.tarball], {
      ...env,
      FLAKE_ALLOW_INSECURE_TRANSPORT: "",
    });
    assert.match(r.stderr, /error \[REFUSED\]: .*only https sources are allowed/);
    assert.deepEqual(readdirSync(images).sort(), before, "no image and no staging directory left");

    const flakesBefore = readdirSync(join(dir, "flakes")).sort();
    r = await ctl([
      "firecracker",
      "register",
      "--vm",
      "leap",
      "--app",
      app("bad"),
      "--overlay-size",
      "20 parsecs",
    ]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--overlay-size "20 parsecs" is not a size/);
    r = await ctl(["firecracker", "register", "--vm", "nosuch", "--app", app("bad")]);
    assert.equal(r.status, 3);
    assert.match(r.stderr, /error \[NOT_FOUND\]: VM image nosuch is not pulled/);
    assert.match(r.stderr, /hint: pull it first: flake-ctl firecracker pull --name nosuch/);
    assert.equal(existsSync(app("bad")), false);
    assert.deepEqual(readdirSync(join(dir, "flakes")).sort(), flakesBefore, "nothing half-registered");

    // an engine that is not installed: exit 125 before anything is made
    const tapsBefore = taps();
    const vmBefore = readdirSync(join(ids, "0", "vm")).sort();
    r = await call("mybash", ["-c", "true"], { env: { ...env, FLAKE_VM_ENGINE: "firecracker" } });
    assert.equal(r.status, 125);
    assert.match(r.stderr, /firecracker-pilot: error \[VM\]: the VM engine firecracker is not installed/);
    assert.match(r.stderr, /hint: .*FLAKE_VM_ENGINE=qemu/);
    r = await call("mybash", ["-c", "true"], { env: { ...env, EOS_QEMU_BINARY: "qemu-not-here" } });
    assert.equal(r.status, 125);
    assert.match(r.stderr, /no VM engine is installed: neither firecracker nor qemu-not-here is in PATH/);
    assert.deepEqual(taps(), tapsBefore, "no tap device left");
    assert.deepEqual(readdirSync(join(ids, "0", "vm")).sort(), vmBefore, "no overlay or run directory left");

    // a flake whose image was removed under it
    rmSync(join(images, "leap", "rootfs"));
    r = await call("mybash", ["-c", "true"]);
    assert.equal(r.status, 125);
    assert.match(r.stderr, /the rootfs of VM image leap is missing/);
  });

  test("remove: the flake, and an image with every flake on it", async () => {
    let r = await ctl(["firecracker", "remove", "--app", app("wait-int")]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(existsSync(app("wait-int")), false);
    assert.equal(existsSync(join(dir, "flakes", "wait-int.yaml")), false);
    r = await ctl(["firecracker", "remove", "--vm", "leap"]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /removed mybash\n/);
    assert.match(r.stdout, /removed image leap\n/);
    assert.equal(existsSync(join(images, "leap")), false);
    assert.equal(existsSync(app("mybash")), false);
    assert.deepEqual(qemuPids(dir), []);
  });
});
