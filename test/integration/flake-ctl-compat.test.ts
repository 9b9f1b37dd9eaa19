/**
 * Issue 14: flake-ctl and the pilots with flake-pilot's command lines and
 * files (test/fixtures/flake-pilot/), in-process on a temporary flakes
 * directory. podman is a recording stand-in (every image "is there"), so
 * what is tested is flake-ctl's own behaviour, not podman's.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";
import { flakeCtlMain } from "../../src/cli/flake-ctl.ts";
import { reportError } from "../../src/cli/main.ts";
import { podmanPilotMain } from "../../src/cli/podman-pilot.ts";
import { firecrackerPilotMain } from "../../src/cli/firecracker-pilot.ts";
import { parseContainerFlake } from "../../src/core/flakes/flake-yaml.ts";
import { loadPilotFlake } from "../../src/io/flakes/pilot.ts";
import type { ProcessRunner, RunResult } from "../../src/io/process.ts";
import { captureContext } from "../helpers/context.ts";

/** A parsed flake file, read freely in assertions. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Yaml = Record<string, any>;

const FIXTURES = fileURLToPath(new URL("../fixtures/flake-pilot/", import.meta.url));

/** podman as far as flake-ctl asks it: images exist, an image mount has /NAME.yaml, containers run. */
function fakePodman(mountDir: string, calls: string[][]): ProcessRunner {
  const ok = (stdout = ""): RunResult => ({
    code: 0,
    signal: null,
    stdout,
    stdoutBytes: Buffer.from(stdout),
    stderr: "",
  });
  return {
    run: async (argv) => {
      calls.push(argv);
      const args = argv.slice(argv.indexOf("podman") + 1);
      if (args[0] === "image" && args[1] === "inspect")
        return ok(
          args
            .slice(4)
            .map((_, i) => `id${i}`)
            .join("\n"),
        );
      if (args[0] === "image" && args[1] === "mount") return ok(`${mountDir}\n`);
      if (args[0] === "container" && args[1] === "inspect") return ok("running\n");
      return ok();
    },
    start: () => {
      throw new Error("flake-ctl starts no long-running process here");
    },
  };
}

describe("flake-ctl with flake-pilot's command lines and files", () => {
  let dir: string;
  let flakesDir: string;
  let bin: string;
  let env: NodeJS.ProcessEnv;
  let calls: string[][];

  const ctl = async (args: string[], opts: { argv0?: string; envOver?: NodeJS.ProcessEnv } = {}) => {
    const c = captureContext({ env: { ...env, ...opts.envOver }, argv0: opts.argv0 ?? "flake-ctl" });
    c.ctx.proc = fakePodman(join(dir, "mnt"), calls);
    const code = await flakeCtlMain(args, c.ctx).catch((error: unknown) =>
      reportError(c.ctx, "flake-ctl", error),
    );
    return { code, stdout: c.stdout(), stderr: c.stderr() };
  };
  const yamlOf = (name: string) => parse(readFileSync(join(flakesDir, `${name}.yaml`), "utf8")) as Yaml;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "eos-compat-"));
    flakesDir = join(dir, "flakes");
    bin = join(dir, "bin");
    mkdirSync(bin);
    mkdirSync(join(dir, "mnt"));
    writeFileSync(join(dir, "mnt", "lynx.yaml"), "container:\n  name: suse-apps/lynx\n");
    writeFileSync(join(dir, "podman-pilot"), "#!/bin/sh\n", { mode: 0o755 });
    writeFileSync(join(dir, "firecracker-pilot"), "#!/bin/sh\n", { mode: 0o755 });
    writeFileSync(join(dir, "inc.tar"), "");
    writeFileSync(join(dir, "inc.txt"), "");
    const images = join(dir, "images");
    mkdirSync(join(images, "tw"), { recursive: true });
    writeFileSync(join(images, "tw", "rootfs"), "");
    writeFileSync(join(images, "tw", "kernel"), "");
    writeFileSync(
      join(dir, "flakes.yml"),
      [
        "generic:",
        `  flakes_dir: ${flakesDir}`,
        `  podman_ids_dir: ${join(dir, "ids")}`,
        `  firecracker_ids_dir: ${join(dir, "ids")}`,
        `  podman_pilot: ${join(dir, "podman-pilot")}`,
        `  firecracker_pilot: ${join(dir, "firecracker-pilot")}`,
        "",
      ].join("\n"),
    );
    env = {
      FLAKES_CONFIG: join(dir, "flakes.yml"),
      EOS_FIRECRACKER_IMAGES_DIR: images,
      EOS_FLAKES_NO_CACHE: "1",
      HOME: join(dir, "home"),
      PATH: process.env.PATH,
    };
    calls = [];
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test("5, 6: flake-pilot's files load (null other section); NAME.d/*.yml read, other files warned about", async () => {
    mkdirSync(flakesDir, { recursive: true });
    cpSync(join(FIXTURES, "lynx.yaml"), join(flakesDir, "lynx.yaml"));
    cpSync(join(FIXTURES, "lynx.d"), join(flakesDir, "lynx.d"), { recursive: true });
    cpSync(join(FIXTURES, "firefox.yaml"), join(flakesDir, "firefox.yaml"));
    const list = await ctl(["list", "--json"]);
    assert.equal(list.code, 0, list.stderr);
    const flakes = JSON.parse(list.stdout) as Array<{ name: string; engine: string; error?: string }>;
    assert.deepEqual(
      flakes.map((f) => [f.name, f.engine, f.error]),
      [
        ["firefox", "firecracker", undefined],
        ["lynx", "podman", undefined],
      ],
    );
    const show = await ctl(["podman", "show", "lynx", "--json"]);
    assert.equal(show.code, 0, show.stderr);
    const shown = JSON.parse(show.stdout) as {
      files: string[];
      flake: { runtime: { podman: string[]; resume: boolean } };
    };
    assert.deepEqual(shown.flake.runtime.podman, ["--net host"]);
    assert.equal(shown.flake.runtime.resume, true);
    assert.deepEqual(
      shown.files.map((f) => f.slice(flakesDir.length + 1)),
      ["lynx.yaml", "lynx.d/10-net.yml", "lynx.d/20-resume.yaml"],
    );
    assert.match(show.stderr, /warning: .*lynx\.d\/README is not read: only \*\.yaml and \*\.yml/);
    // The pilot's load path says the same on stderr.
    const c = captureContext({ env });
    const loaded = await loadPilotFlake(c.ctx, "lynx", "podman", async (s) => parseContainerFlake(s));
    assert.equal(loaded.flake.runtime.resume, true);
    assert.match(c.stderr(), /podman-pilot: warning: .*lynx\.d\/README is not read/);
    const vm = await ctl(["firecracker", "show", "firefox", "--format", "json"]);
    assert.equal(vm.code, 0, vm.stderr);
  });

  test("9: register refuses an existing --app without --force, as flake-pilot", async () => {
    const args = ["podman", "register", "--container", "joe", "--app", join(bin, "joe")];
    assert.equal((await ctl(args)).code, 0);
    const again = await ctl(args);
    assert.equal(again.code, 3);
    assert.match(again.stderr, /\[REFUSED\]: App path .*\/bin\/joe already exists \(a registered flake\)/);
    writeFileSync(join(bin, "vi"), "#!/bin/sh\n");
    const other = await ctl(["podman", "register", "--container", "joe", "--app", join(bin, "vi")]);
    assert.equal(other.code, 3);
    assert.match(other.stderr, /App path .*\/bin\/vi already exists \(not a flake\)/);
    assert.equal(readFileSync(join(bin, "vi"), "utf8"), "#!/bin/sh\n");
    const forced = await ctl([...args, "--force"]);
    assert.equal(forced.code, 0, forced.stderr);
  });

  test("10: register --info prints the image's registration info and registers nothing", async () => {
    const r = await ctl([
      "podman",
      "register",
      "--container",
      "suse-apps/lynx",
      "--app",
      join(bin, "lynx2"),
      "--info",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "container:\n  name: suse-apps/lynx\n");
    assert.ok(!existsSync(join(bin, "lynx2")));
    assert.ok(!existsSync(join(flakesDir, "lynx2.yaml")));
  });

  test("11, 12, 13: --target '', multi-value flags, --base implies the host-dependency check", async () => {
    const r = await ctl([
      "podman",
      "register",
      "--container",
      "app",
      "--app",
      join(bin, "multi"),
      "--target",
      "",
      "--base",
      "basesystem",
      "--layer",
      "l1",
      "l2",
      "--include-path",
      join(dir, "inc.txt"),
      join(dir, "inc.tar"),
      "--opt",
      "\\--net host",
      "\\-e A=1",
      "--opt",
      "\\--privileged",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const y = yamlOf("multi");
    assert.equal(y.container.target_app_path, "/");
    assert.deepEqual(y.container.layers, ["l1", "l2"]);
    assert.deepEqual(y.include.path, [join(dir, "inc.txt"), join(dir, "inc.tar")]);
    assert.deepEqual(y.container.runtime.podman, ["--net host", "-e A=1", "--privileged"]);
    assert.equal(y.container.check_host_dependencies, true);
    const off = await ctl([
      "podman",
      "register",
      "--container",
      "app",
      "--app",
      join(bin, "nodeps"),
      "--base",
      "basesystem",
      "--no-check-host-dependencies",
    ]);
    assert.equal(off.code, 0, off.stderr);
    assert.equal(yamlOf("nodeps").container.check_host_dependencies, false);
    const plain = await ctl(["podman", "register", "--container", "app", "--app", join(bin, "plain")]);
    assert.equal(plain.code, 0, plain.stderr);
    assert.equal(yamlOf("plain").container.check_host_dependencies, false);
    assert.equal(yamlOf("plain").container.target_app_path, join(bin, "plain"));
  });

  test("14: remove --force of an unregistered app succeeds quietly; without --force it is an error", async () => {
    const quiet = await ctl(["podman", "remove", "--app", join(bin, "never"), "--force"]);
    assert.deepEqual([quiet.code, quiet.stdout, quiet.stderr], [0, "", ""]);
    const vmQuiet = await ctl(["firecracker", "remove", "--app", join(bin, "never"), "--force"]);
    assert.deepEqual([vmQuiet.code, vmQuiet.stdout], [0, ""]);
    const loud = await ctl(["podman", "remove", "--app", join(bin, "never")]);
    assert.equal(loud.code, 3);
    assert.match(loud.stderr, /\[NOT_FOUND\]: no flake registered for .*never/);
  });

  test("15: --version, init --force, list --format, show --format with the running instances", async () => {
    const v = await ctl(["--version"]);
    assert.deepEqual([v.code, v.stdout], [0, "0.1.0\n"]);
    const home = join(dir, "home");
    const userEnv = { FLAKES_CONFIG: undefined, HOME: home, XDG_RUNTIME_DIR: join(dir, "xdg") };
    assert.equal((await ctl(["init", "--user"], { envOver: userEnv })).code, 0);
    const userConfig = join(home, ".config", "flakes.yml");
    writeFileSync(userConfig, "generic:\n  flakes_dir: /nowhere\n");
    assert.equal((await ctl(["init", "--user"], { envOver: userEnv })).code, 0);
    assert.match(readFileSync(userConfig, "utf8"), /nowhere/, "without --force an existing flakes.yml stays");
    const forced = await ctl(["init", "--user", "--force"], { envOver: userEnv });
    assert.equal(forced.code, 0, forced.stderr);
    assert.match(readFileSync(userConfig, "utf8"), /flakes_dir: .*\.local\/share\/flakes/);

    const csv = await ctl(["list", "--format", "csv"]);
    assert.equal(csv.code, 0, csv.stderr);
    const lines = csv.stdout.split("\r\n");
    assert.equal(lines[0], "name,engine,image,host_app_path,target_app_path,base,error");
    assert.ok(lines.includes(`lynx,podman,suse-apps/lynx,/usr/bin/lynx,/usr/bin/lynx,basesystem,`));
    const table = await ctl(["list", "--format", "table"]);
    assert.match(table.stdout, /^NAME +ENGINE +IMAGE/);
    assert.match(table.stdout, /\nfirefox +firecracker +tw /);
    const bad = await ctl(["list", "--format", "xml"]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--format "xml": use table, json or csv/);

    const ids = join(dir, "ids", String(process.getuid?.() ?? 0));
    mkdirSync(ids, { recursive: true });
    writeFileSync(join(ids, "lynx@work.cid"), "c0ffee\n");
    const shown = await ctl(["podman", "show", "--format", "json"]);
    assert.equal(shown.code, 0, shown.stderr);
    const view = JSON.parse(shown.stdout) as { flakes: Array<{ name: string }>; instances: unknown[] };
    assert.ok(view.flakes.some((f) => f.name === "lynx"));
    assert.deepEqual(view.instances, [
      { flake: "lynx", instance: "work", id: "c0ffee", status: "running", file: join(ids, "lynx@work.cid") },
    ]);
    assert.ok(calls.some((c) => c.join(" ").endsWith("container inspect --format {{.State.Status}} c0ffee")));
    const text = await ctl(["podman", "show"]);
    assert.match(text.stdout, /FLAKE +INSTANCE +STATUS +ID/);
    assert.match(text.stdout, /lynx +work +running +c0ffee/);
    const vms = await ctl(["firecracker", "show", "--format", "csv"]);
    assert.equal(vms.code, 0, vms.stderr);
    assert.match(vms.stdout, /^name,image,app\r\nfirefox,tw,\/usr\/bin\/firefox\r\n/);
  });

  test("16: firecracker register writes what flake-pilot writes; --include-* needs --overlay-size; --run-as", async () => {
    const app = join(bin, "ff");
    const r = await ctl([
      "firecracker",
      "register",
      "--vm",
      "tw",
      "--app",
      app,
      "--target",
      "/usr/bin/firefox",
      "--no-net",
      "--resume",
      "--force-vsock",
      "--overlay-size",
      "20GiB",
      "--run-as",
      "flakeuser",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const ours = yamlOf("ff").vm;
    const theirs = (parse(readFileSync(join(FIXTURES, "firefox.yaml"), "utf8")) as Yaml).vm;
    assert.deepEqual(ours.runtime.firecracker.boot_args, theirs.runtime.firecracker.boot_args);
    assert.equal(ours.runtime.runas, "flakeuser");
    assert.equal(ours.runtime.resume, true);
    assert.equal(ours.runtime.force_vsock, true);
    assert.equal(ours.runtime.firecracker.overlay_size, "20GiB");
    const noOverlay = await ctl([
      "firecracker",
      "register",
      "--vm",
      "tw",
      "--app",
      join(bin, "tarred"),
      "--include-tar",
      join(dir, "inc.tar"),
    ]);
    assert.equal(noOverlay.code, 2);
    assert.match(noOverlay.stderr, /--include-tar and --include-path need --overlay-size/);
    assert.ok(!existsSync(join(bin, "tarred")));
  });

  test("17: a missing pilot is refused (naming podman_pilot), or the pilot beside flake-ctl is linked", async () => {
    const missing = { FLAKES_CONFIG: join(dir, "flakes-nopilot.yml") };
    writeFileSync(
      missing.FLAKES_CONFIG,
      `generic:\n  flakes_dir: ${flakesDir}\n  podman_pilot: ${join(dir, "no", "podman-pilot")}\n`,
    );
    const refused = await ctl(["podman", "register", "--container", "app", "--app", join(bin, "dangling")], {
      envOver: missing,
    });
    assert.equal(refused.code, 3);
    assert.match(refused.stderr, /\[NOT_FOUND\]: the pilot .*\/no\/podman-pilot does not exist/);
    assert.match(refused.stderr, /hint: .*generic\.podman_pilot in .*flakes-nopilot\.yml/);
    assert.ok(!existsSync(join(bin, "dangling")) && !existsSync(join(flakesDir, "dangling.yaml")));

    const dist = join(dir, "dist");
    mkdirSync(dist);
    writeFileSync(join(dist, "flake-ctl.mjs"), "");
    writeFileSync(join(dist, "podman-pilot.mjs"), "#!/usr/bin/env node\n", { mode: 0o755 });
    const beside = await ctl(["podman", "register", "--container", "app", "--app", join(bin, "beside")], {
      envOver: missing,
      argv0: join(dist, "flake-ctl.mjs"),
    });
    assert.equal(beside.code, 0, beside.stderr);
    assert.ok(lstatSync(join(bin, "beside")).isSymbolicLink());
    assert.equal(readlinkSync(join(bin, "beside")), join(dist, "podman-pilot.mjs"));
  });

  test("18: the pilots called as themselves with --help say what they are, exit 0", async () => {
    for (const [main, name] of [
      [podmanPilotMain, "podman-pilot"],
      [firecrackerPilotMain, "firecracker-pilot"],
    ] as const) {
      const c = captureContext({ env, argv0: `/usr/bin/${name}` });
      assert.equal(await main(["--help"], c.ctx), 0);
      assert.match(c.stdout(), new RegExp(`^${name} \\S+: the launcher of flakes`));
      assert.match(c.stdout(), /flake-ctl (podman|firecracker) register --app \/usr\/bin\/NAME/);
      // Through a flake's link, --help is the app's argument, not the pilot's.
      const viaLink = captureContext({ env, argv0: "/usr/bin/no-such-flake" });
      assert.notEqual(await main(["--help"], viaLink.ctx), 0);
      assert.equal(viaLink.stdout(), "");
    }
  });
});
