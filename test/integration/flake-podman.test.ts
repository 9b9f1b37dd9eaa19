/**
 * Container flakes with real podman (runc, project-local containers.conf,
 * isolated storage) on images built here: a busybox base, a delta image that
 * only works on top of it, a layer, and a self-contained app image.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { spawn } from "node:child_process";
import {
  createPodmanFixture,
  importImage,
  podmanSkipReason,
  run,
  type PodmanFixture,
} from "../helpers/podman-fixture.ts";

const skip = podmanSkipReason();

const APP_SCRIPTS: Record<string, string> = {
  "/usr/bin/exit-with": '#!/bin/sh\necho "exiting with $1"\nexit "$1"\n',
  "/usr/bin/upper": "#!/bin/sh\nexec tr a-z A-Z\n",
  "/usr/bin/streams": "#!/bin/sh\necho to-stdout\necho to-stderr >&2\necho more-stdout\n",
  "/usr/bin/wait-int": "#!/bin/sh\necho ready\nexec sleep 30\n",
  "/usr/bin/counter":
    '#!/bin/sh\nn=$(cat /tmp/count 2>/dev/null || echo 0)\nn=$((n+1))\necho "$n" > /tmp/count\necho "$n"\n',
  "/usr/bin/show-env": '#!/bin/sh\necho "greeting=$GREETING home=$CALLER_HOME args=$*"\n',
  "/usr/bin/cat-file": '#!/bin/sh\ncat "$1"\n',
};

describe("container flakes (podman)", { skip }, () => {
  let fx: PodmanFixture;
  const ctl = (args: string[], env: NodeJS.ProcessEnv = fx.env) => run(fx.flakeCtl, args, { env });
  const app = (name: string) => join(fx.flakesDir, "bin", name);
  const flake = (name: string, args: string[] = [], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}) =>
    run(app(name), args, { env: opts.env ?? fx.env, input: opts.input ?? "" });

  before(async () => {
    fx = await createPodmanFixture();
    importImage(fx, "localhost/flaketest-base", {}, true);
    importImage(fx, "localhost/flaketest-layer", { "/etc/layer.txt": "from-the-layer\n" });
    // The delta image has no shell and no busybox: its script only runs on top of the base.
    importImage(fx, "localhost/flaketest-delta", {
      "/usr/bin/lynx":
        '#!/bin/sh\necho "lynx args: $*"\necho "layer: $(cat /etc/layer.txt 2>/dev/null || echo none)"\n',
    });
    importImage(fx, "localhost/flaketest-app", APP_SCRIPTS, true);
  });

  after(() => fx?.cleanup());

  const register = async (name: string, extra: string[], image = "localhost/flaketest-app") => {
    const r = await ctl(["podman", "register", "--container", image, "--app", app(name), ...extra]);
    assert.equal(r.status, 0, `register ${name}: ${r.stderr}`);
  };
  const remove = async (name: string) => {
    const r = await ctl(["podman", "remove", "--app", app(name)]);
    assert.equal(r.status, 0, `remove ${name}: ${r.stderr}`);
  };

  test("seed's lynx registration: delta image on its base (and a layer), provisioned without running the image", async () => {
    // The delta image alone cannot run its app: no /bin/sh in it.
    const alone = fx.podman(["run", "--rm", "localhost/flaketest-delta", "/usr/bin/lynx"]);
    assert.notEqual(alone.status, 0, "delta image must not work alone");

    const r = await ctl([
      "podman",
      "register",
      "--container",
      "localhost/flaketest-delta",
      "--target",
      "/usr/bin/lynx",
      "--app",
      app("lynx"),
      "--base",
      "localhost/flaketest-base",
    ]);
    assert.equal(r.status, 0, r.stderr);
    const yaml = readFileSync(join(fx.flakesDir, "lynx.yaml"), "utf8");
    assert.match(yaml, /^container:$/m);
    assert.match(yaml, /^ {2}name: localhost\/flaketest-delta$/m);
    assert.match(yaml, /^ {2}target_app_path: \/usr\/bin\/lynx$/m);
    assert.match(yaml, /^ {2}base_container: localhost\/flaketest-base$/m);
    assert.match(yaml, /^ {4}resume: false$/m);
    assert.ok(lstatSync(app("lynx")).isSymbolicLink());
    assert.equal(readlinkSync(app("lynx")), fx.pilot);
    assert.ok(existsSync(join(fx.flakesDir, "lynx.d")));

    const first = await flake("lynx", ["-dump", "http://x"]);
    assert.equal(first.status, 0, first.stderr);
    assert.equal(first.stdout, "lynx args: -dump http://x\nlayer: none\n");

    // Second launch reuses the provisioned image: exactly one podman call.
    const again = await flake("lynx", ["again"], { env: { ...fx.env, PILOT_DEBUG: "1" } });
    assert.equal(again.status, 0, again.stderr);
    assert.equal(again.stdout, "lynx args: again\nlayer: none\n");
    const calls = again.stderr.split("\n").filter((l) => l.startsWith("podman-pilot: debug: podman "));
    assert.equal(calls.length, 1, again.stderr);
    assert.match(calls[0] ?? "", /podman run -i --pull=never --init --rm /);

    // With a layer between base and app.
    await ctl([
      "podman",
      "register",
      "--container",
      "localhost/flaketest-delta",
      "--target",
      "/usr/bin/lynx",
      "--app",
      app("lynx-layered"),
      "--base",
      "localhost/flaketest-base",
      "--layer",
      "localhost/flaketest-layer",
    ]);
    const layered = await flake("lynx-layered");
    assert.equal(layered.status, 0, layered.stderr);
    assert.equal(layered.stdout, "lynx args: \nlayer: from-the-layer\n");

    // A new base image is noticed (cache keyed by image IDs), without re-registering.
    importImage(fx, "localhost/flaketest-layer", { "/etc/layer.txt": "layer-v2\n" });
    const updated = await flake("lynx-layered");
    assert.equal(updated.stdout, "lynx args: \nlayer: layer-v2\n", updated.stderr);

    await remove("lynx");
    await remove("lynx-layered");
    assert.ok(!existsSync(app("lynx")));
    assert.ok(!existsSync(join(fx.flakesDir, "lynx.yaml")));
    assert.ok(!existsSync(join(fx.flakesDir, "lynx.d")));
  });

  test("exit codes pass through: 0, 3, and 130 for SIGINT", async () => {
    await register("exit-with", ["--target", "/usr/bin/exit-with"]);
    const ok = await flake("exit-with", ["0"]);
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(ok.stdout, "exiting with 0\n");
    const three = await flake("exit-with", ["3"]);
    assert.equal(three.status, 3, three.stderr);

    await register("wait-int", ["--target", "/usr/bin/wait-int"]);
    const child = spawn(app("wait-int"), [], { env: fx.env, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no "ready" from the flake; stderr: ${stderr}`)),
        30_000,
      );
      child.stdout.on("data", (b: Buffer) => {
        stdout += b.toString();
        if (stdout.includes("ready")) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    const started = Date.now();
    child.kill("SIGINT");
    const status = await new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
    assert.equal(status, 130, stderr);
    assert.ok(Date.now() - started < 15_000, "the app stopped on SIGINT, not at the end of its sleep");
    await remove("exit-with");
    await remove("wait-int");
  });

  test("stdin is piped through, both ways, and streams", async () => {
    await register("upper", ["--target", "/usr/bin/upper"]);
    const r = await flake("upper", [], { input: "hello flake\n" });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "HELLO FLAKE\n");
    const big = "abcdefghij\n".repeat(200_000); // 2.2 MB through the container and back
    const b = await flake("upper", [], { input: big });
    assert.equal(b.status, 0, b.stderr);
    assert.equal(b.stdout.length, big.length);
    assert.equal(b.stdout, big.toUpperCase());
    // `echo x | flake` from a shell
    const sh = await run("/bin/sh", ["-c", `echo piped | '${app("upper")}'`], { env: fx.env });
    assert.equal(sh.stdout, "PIPED\n", sh.stderr);
    await remove("upper");
  });

  test("stdout and stderr stay apart (no TTY without a terminal, even with -ti in the options)", async () => {
    await register("streams", ["--target", "/usr/bin/streams", "--opt", "-ti"]);
    const r = await flake("streams");
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "to-stdout\nmore-stdout\n");
    assert.equal(r.stderr, "to-stderr\n");
    await remove("streams");
  });

  test("resume flake keeps state between calls; @NAME instances; stale id file recovered", async () => {
    await register("counter", ["--target", "/usr/bin/counter", "--resume"]);
    const yaml = readFileSync(join(fx.flakesDir, "counter.yaml"), "utf8");
    assert.match(yaml, /^ {4}resume: true$/m);
    assert.equal((await flake("counter")).stdout, "1\n");
    assert.equal((await flake("counter")).stdout, "2\n");
    const third = await flake("counter");
    assert.equal(third.stdout, "3\n", third.stderr);
    // A named instance has its own state.
    assert.equal((await flake("counter", ["@other"])).stdout, "1\n");
    assert.equal((await flake("counter")).stdout, "4\n");

    // The instance is gone (reboot, podman rm): the id file is stale; a new one starts.
    const uid = String(process.getuid?.() ?? 0);
    const cidFile = join(fx.idsDir, uid, "counter.cid");
    const cid = readFileSync(cidFile, "utf8").trim();
    fx.podman(["rm", "--force", "--time", "0", cid]);
    const fresh = await flake("counter");
    assert.equal(fresh.status, 0, fresh.stderr);
    assert.equal(fresh.stdout, "1\n");
    assert.notEqual(readFileSync(cidFile, "utf8").trim(), cid);

    // A stopped instance is started again, its state kept.
    const cid2 = readFileSync(cidFile, "utf8").trim();
    fx.podman(["stop", "--time", "0", cid2]);
    assert.equal((await flake("counter")).stdout, "2\n");

    // %remove drops the instance after the call.
    const last = await flake("counter", ["%remove"]);
    assert.equal(last.stdout, "3\n", last.stderr);
    assert.ok(!existsSync(cidFile));
    assert.notEqual(fx.podman(["container", "exists", cid2]).status, 0);
    await flake("counter", ["@other", "%remove"]);
    await remove("counter");
  });

  test("flake-pilot style YAML with a NAME.d override, deep-merged; %VAR options", async () => {
    mkdirSync(join(fx.flakesDir, "greet.d"), { recursive: true });
    mkdirSync(join(fx.flakesDir, "bin"), { recursive: true });
    // As flake-pilot's template writes it: nulls as ~, -ti in the options.
    writeFileSync(
      join(fx.flakesDir, "greet.yaml"),
      [
        "include:",
        "  tar: ~",
        "  path: ~",
        "container:",
        "  name: localhost/flaketest-app",
        "  target_app_path: /usr/bin/show-env",
        `  host_app_path: ${app("greet")}`,
        "  base_container: ~",
        "  check_host_dependencies: false",
        "  layers: ~",
        "  runtime:",
        "    runas: root",
        "    resume: false",
        "    attach: false",
        "    podman:",
        '      - "-ti"',
        "      - -e GREETING=from-base-file",
        "",
      ].join("\n"),
    );
    // The override changes only the options; name, target etc. stay (a text concat would lose them).
    writeFileSync(
      join(fx.flakesDir, "greet.d", "10-env.yaml"),
      "container:\n  runtime:\n    podman:\n      - -e GREETING=from-override\n      - -e CALLER_HOME=%HOME\n",
    );
    symlinkSync(fx.pilot, app("greet"));
    const r = await flake("greet", ["x", "%silent"], { env: { ...fx.env, HOME: "/home/flaky" } });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "greeting=from-override home=/home/flaky args=x\n");
    assert.equal(r.stderr, "");

    // A later fragment wins over an earlier one.
    writeFileSync(
      join(fx.flakesDir, "greet.d", "20-later.yaml"),
      'container:\n  runtime:\n    podman: ["-e GREETING=later"]\n',
    );
    const later = await flake("greet");
    assert.equal(later.stdout, "greeting=later home= args=\n", later.stderr);

    // An unknown key: the error names the fragment and the key; exit 125, nothing run.
    writeFileSync(join(fx.flakesDir, "greet.d", "30-bad.yaml"), "container:\n  runtime:\n    podmn: []\n");
    const bad = await flake("greet");
    assert.equal(bad.status, 125);
    assert.match(bad.stderr, /greet\.d\/30-bad\.yaml: unknown key container\.runtime\.podmn/);
    writeFileSync(join(fx.flakesDir, "greet.d", "30-bad.yaml"), "container: [oops\n");
    const invalid = await flake("greet");
    assert.equal(invalid.status, 125);
    assert.match(invalid.stderr, /30-bad\.yaml: invalid YAML/);
    rmSync(join(fx.flakesDir, "greet.d", "30-bad.yaml"));
    await remove("greet");
  });

  test("one podman process per plain launch, counted outside the pilot", async () => {
    await register("exit-zero", ["--target", "/usr/bin/exit-with"]);
    const shimDir = join(fx.dir, "shim");
    mkdirSync(shimDir, { recursive: true });
    const log = join(fx.dir, "podman-calls.log");
    writeFileSync(join(shimDir, "podman"), `#!/bin/sh\necho "$*" >> '${log}'\nexec /usr/bin/podman "$@"\n`);
    chmodSync(join(shimDir, "podman"), 0o755);
    const env = { ...fx.env, PATH: `${shimDir}:${process.env.PATH ?? "/usr/bin:/bin"}` };
    for (let i = 0; i < 3; i++) {
      const r = await flake("exit-zero", ["0"], { env });
      assert.equal(r.status, 0, r.stderr);
    }
    const calls = readFileSync(log, "utf8").trim().split("\n");
    assert.equal(calls.length, 3, calls.join("\n"));
    for (const call of calls) {
      assert.match(call, /^run -i --pull=never --init --rm /);
      assert.doesNotMatch(call, /prune|pull=newer|pull=always/);
    }
    await remove("exit-zero");
  });

  test("attach flake keeps its instance; includes are provisioned into the image", async () => {
    const includeDir = join(fx.dir, "include-src");
    mkdirSync(join(includeDir, "etc"), { recursive: true });
    writeFileSync(join(includeDir, "etc", "included.txt"), "included-v1\n");
    await register("show-inc", [
      "--target",
      "/usr/bin/cat-file",
      "--include-path",
      join(includeDir, "etc", "included.txt"),
    ]);
    const r = await flake("show-inc", [join(includeDir, "etc", "included.txt")]);
    assert.equal(r.stdout, "included-v1\n", r.stderr);
    writeFileSync(join(includeDir, "etc", "included.txt"), "included-v2\n");
    const r2 = await flake("show-inc", [join(includeDir, "etc", "included.txt")]);
    assert.equal(r2.stdout, "included-v2\n", r2.stderr);
    await remove("show-inc");

    await register("attached", ["--target", "/usr/bin/exit-with", "--attach"]);
    const a1 = await flake("attached", ["4"]);
    assert.equal(a1.status, 4, a1.stderr);
    const cidFile = join(fx.idsDir, String(process.getuid?.() ?? 0), "attached.cid");
    const cid = readFileSync(cidFile, "utf8").trim();
    // Stopped instance: started again (with its original arguments), exit code kept.
    const a2 = await flake("attached", []);
    assert.equal(a2.status, 4, a2.stderr);
    assert.equal(readFileSync(cidFile, "utf8").trim(), cid);
    await flake("attached", ["%remove"]);
    assert.ok(!existsSync(cidFile));
    await remove("attached");
  });

  test("bad input: clear errors and nothing half-registered", async () => {
    // Unknown image
    let r = await ctl(["podman", "register", "--container", "localhost/no-such-image", "--app", app("nope")]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /localhost\/no-such-image is not in the local podman storage/);
    assert.ok(!existsSync(app("nope")));
    assert.ok(!existsSync(join(fx.flakesDir, "nope.yaml")));
    // Missing base
    r = await ctl([
      "podman",
      "register",
      "--container",
      "localhost/flaketest-delta",
      "--base",
      "localhost/no-base",
      "--app",
      app("nope"),
    ]);
    assert.match(r.stderr, /localhost\/no-base is not in the local podman storage/);
    assert.ok(!existsSync(join(fx.flakesDir, "nope.yaml")));
    // An app path that exists and is not a flake
    const plain = join(fx.dir, "plain-file");
    writeFileSync(plain, "#!/bin/sh\n");
    r = await ctl(["podman", "register", "--container", "localhost/flaketest-app", "--app", plain]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /App path .* already exists \(not a flake\)/);
    assert.equal(readFileSync(plain, "utf8"), "#!/bin/sh\n");
    assert.ok(!existsSync(join(fx.flakesDir, "plain-file.yaml")));
    r = await ctl([
      "podman",
      "register",
      "--container",
      "localhost/flaketest-app",
      "--app",
      plain,
      "--force",
    ]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(lstatSync(plain).isSymbolicLink());
    await ctl(["podman", "remove", "--app", plain]);
    // Path tricks
    r = await ctl([
      "podman",
      "register",
      "--container",
      "localhost/flaketest-app",
      "--app",
      `${fx.dir}/x/../evil`,
    ]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /plain absolute path/);
    r = await ctl(["podman", "register", "--container", "localhost/flaketest-app", "--app", "relative/app"]);
    assert.match(r.stderr, /must be an absolute path/);
    // Original spelling of the flag is accepted
    r = await ctl([
      "podman",
      "register",
      "--container",
      "localhost/flaketest-app",
      "--app",
      app("hostdeps"),
      "--target",
      "/usr/bin/streams",
      "--check_host_dependencies",
    ]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(readFileSync(join(fx.flakesDir, "hostdeps.yaml"), "utf8"), /check_host_dependencies: true/);
    await remove("hostdeps");
    // podman missing
    await register("nopodman", ["--target", "/usr/bin/streams"]);
    const nodeOnly = join(fx.dir, "node-only");
    mkdirSync(nodeOnly, { recursive: true });
    symlinkSync(process.execPath, join(nodeOnly, "node"));
    const noPodman = await flake("nopodman", [], { env: { ...fx.env, PATH: nodeOnly } });
    assert.equal(noPodman.status, 125);
    assert.match(noPodman.stderr, /podman is not installed/);
    const ctlNoPodman = await run(
      process.execPath,
      [fx.flakeCtl, "podman", "register", "--container", "localhost/flaketest-app", "--app", app("np2")],
      { env: { ...fx.env, PATH: "/nonexistent" } },
    );
    assert.match(ctlNoPodman.stderr, /podman is not installed/);
    assert.ok(!existsSync(join(fx.flakesDir, "np2.yaml")));
    await remove("nopodman");
    // Missing volume path: an error naming it, or left out with %ignore_missing_volume_path
    await register("vol", ["--target", "/usr/bin/streams", "--opt", `\\-v ${fx.dir}/missing:/data`]);
    const vol = await flake("vol");
    assert.equal(vol.status, 125);
    assert.match(vol.stderr, /missing does not exist/);
    const ignored = await flake("vol", ["%ignore_missing_volume_path"]);
    assert.equal(ignored.status, 0, ignored.stderr);
    await remove("vol");
  });

  test("list, show, init, and remove --container", async () => {
    await register("lister", ["--target", "/usr/bin/streams"]);
    const list = await ctl(["list"]);
    assert.equal(list.stdout, "lister\n");
    const json = JSON.parse((await ctl(["list", "--json"])).stdout) as Array<Record<string, unknown>>;
    assert.equal(json[0]?.engine, "podman");
    assert.equal(json[0]?.image, "localhost/flaketest-app");
    const show = await ctl(["podman", "show", "lister", "--json"]);
    assert.equal(show.status, 0, show.stderr);
    assert.deepEqual((JSON.parse(show.stdout) as { command: string[] }).command.slice(0, 3), [
      "podman",
      "run",
      "-i",
    ]);
    importImage(fx, "localhost/flaketest-doomed", APP_SCRIPTS, true);
    await register("doomed", ["--target", "/usr/bin/streams"], "localhost/flaketest-doomed");
    const rm = await ctl(["podman", "remove", "--container", "localhost/flaketest-doomed"]);
    assert.equal(rm.status, 0, rm.stderr);
    assert.ok(!existsSync(app("doomed")));
    assert.notEqual(fx.podman(["image", "exists", "localhost/flaketest-doomed"]).status, 0);
    await remove("lister");

    const home = join(fx.dir, "home");
    const env: NodeJS.ProcessEnv = { ...fx.env, HOME: home, XDG_RUNTIME_DIR: join(fx.dir, "xdg-run") };
    delete env.FLAKES_CONFIG;
    delete env.XDG_CONFIG_HOME;
    delete env.XDG_DATA_HOME;
    const init = await ctl(["init", "--user"], env);
    assert.equal(init.status, 0, init.stderr);
    assert.match(
      readFileSync(join(home, ".config", "flakes.yml"), "utf8"),
      /flakes_dir: .*\.local\/share\/flakes/,
    );
    assert.ok(existsSync(join(home, ".local", "share", "flakes")));
    const userList = await ctl(["list", "--user"], env);
    assert.equal(userList.status, 0, userList.stderr);
    assert.equal(userList.stdout, "");
  });
});
