import { test } from "node:test";
import assert from "node:assert/strict";
import {
  attachRunArgv,
  checkVolumes,
  cidFileName,
  execArgv,
  needsProvisioning,
  normaliseRegisterOption,
  parseHostDependencies,
  podmanOptions,
  provisionContainerfile,
  provisionedImageName,
  resumeCreateArgv,
  runArgv,
  type ContainerFlake,
} from "../../src/core/flakes/container.ts";
import { parseContainerFlake, renderContainerFlake } from "../../src/core/flakes/flake-yaml.ts";

// flake-pilot's container template after `flake-ctl podman register` (v3.1.44)
const FLAKE_PILOT_YAML = `include:
  tar: ~
  path: ~
container:
  name: suse-apps/lynx
  target_app_path: /usr/bin/lynx
  host_app_path: /usr/share/flakes/bin/lynx
  base_container: basesystem
  check_host_dependencies: false
  layers: ~
  runtime:
    runas: root
    resume: false
    attach: false
    podman:
      - "-ti"
      - --storage-opt size=10G
`;

test("a flake-pilot registration loads unchanged", () => {
  const flake = parseContainerFlake([{ file: "/usr/share/flakes/lynx.yaml", text: FLAKE_PILOT_YAML }]);
  assert.equal(flake.name, "suse-apps/lynx");
  assert.equal(flake.targetAppPath, "/usr/bin/lynx");
  assert.equal(flake.hostAppPath, "/usr/share/flakes/bin/lynx");
  assert.equal(flake.baseContainer, "basesystem");
  assert.deepEqual(flake.layers, []);
  assert.equal(flake.runtime.runas, "root");
  assert.deepEqual(flake.runtime.podman, ["-ti", "--storage-opt size=10G"]);
  assert.deepEqual(flake.include, { tar: [], path: [] });
  assert.ok(needsProvisioning(flake));
});

test("NAME.d override deep-merges (flake-pilot concatenated text and lost the rest of container:)", () => {
  const flake = parseContainerFlake([
    { file: "/f/lynx.yaml", text: FLAKE_PILOT_YAML },
    { file: "/f/lynx.d/10.yaml", text: "container:\n  runtime:\n    resume: true\n" },
    { file: "/f/lynx.d/20.yaml", text: "container:\n  runtime:\n    podman: ['--net host']\n" },
  ]);
  assert.equal(flake.name, "suse-apps/lynx");
  assert.equal(flake.runtime.resume, true);
  assert.deepEqual(flake.runtime.podman, ["--net host"]);
});

test("bad flake files: unknown keys, resume+attach, layers without base, bad image names", () => {
  const parse = (text: string) => parseContainerFlake([{ file: "/f/x.yaml", text }]);
  assert.throws(
    () => parse("container:\n  name: a\n  host_app_path: /x\n  bogus: 1\n"),
    /\/f\/x\.yaml: unknown key container\.bogus/,
  );
  assert.throws(() => parse("include: {}\n"), /missing required key container/);
  assert.throws(
    () => parse("container:\n  name: a\n  host_app_path: /x\n  runtime: {resume: true, attach: true}\n"),
    /resume and attach/,
  );
  assert.throws(
    () => parse("container:\n  name: a\n  host_app_path: /x\n  layers: [l]\n"),
    /needs container\.base_container/,
  );
  assert.throws(
    () => parse("container:\n  name: '-rf'\n  host_app_path: /x\n"),
    /container\.name: must be a container image name/,
  );
  assert.throws(
    () => parse("container:\n  name: a\n  host_app_path: x\n"),
    /host_app_path: must be an absolute path/,
  );
  assert.throws(
    () => parse("container:\n  name: a\n  host_app_path: /x\n  target_app_path: '/a b'\n"),
    /target_app_path: must be an absolute path without spaces/,
  );
});

test("register output reads back the same", () => {
  const flake: ContainerFlake = {
    name: "localhost/app",
    targetAppPath: "/usr/bin/app",
    hostAppPath: "/usr/bin/app",
    baseContainer: "localhost/base",
    layers: ["localhost/l1", "localhost/l2"],
    checkHostDependencies: true,
    runtime: { runas: "root", resume: true, attach: false, podman: ["--net host", "-e A=%HOME"] },
    include: { tar: ["/srv/x.tar"], path: ["/etc/app.conf"] },
  };
  const text = renderContainerFlake(flake);
  assert.match(text, /^container:$/m);
  assert.match(text, /^ {2}check_host_dependencies: true$/m);
  assert.deepEqual(parseContainerFlake([{ file: "/f/app.yaml", text }]), flake);
  const minimal = renderContainerFlake({
    ...flake,
    baseContainer: undefined,
    layers: [],
    include: { tar: [], path: [] },
  });
  assert.match(minimal, /base_container: ~/);
});

test("runtime options: split once, \\ stripped, %VAR expanded, TTY/rm/pull/detach decided by the pilot", () => {
  const opts = podmanOptions(
    [
      "-ti",
      "\\--net host",
      "--storage-opt size=10G",
      "-v %HOME:/home/me",
      "--rm",
      "--pull=newer",
      "-it",
      "--tty=true",
      "-d",
    ],
    { env: { HOME: "/root" }, removeAfterRun: true },
  );
  assert.deepEqual(opts, ["--rm", "--net", "host", "--storage-opt", "size=10G", "-v", "/root:/home/me"]);
  assert.deepEqual(podmanOptions(undefined, { env: {}, removeAfterRun: false }), []);
  assert.equal(normaliseRegisterOption("\\--net host"), "--net host");
});

test("one podman run per launch: -i always, -t only with a terminal, no pulls, --init for signals", () => {
  const shape = {
    image: "localhost/app",
    target: "/usr/bin/app",
    options: ["--rm"],
    tty: false,
    appArgs: ["a", "b c"],
  };
  assert.deepEqual(runArgv(shape), [
    "run",
    "-i",
    "--pull=never",
    "--init",
    "--rm",
    '--entrypoint=["/usr/bin/app"]',
    "localhost/app",
    "a",
    "b c",
  ]);
  assert.deepEqual(runArgv({ ...shape, tty: true }).slice(0, 3), ["run", "-i", "-t"]);
  // target / means the image's own entrypoint
  assert.ok(!runArgv({ ...shape, target: "/" }).some((a) => a.startsWith("--entrypoint")));
  // the flake can turn --init off
  assert.ok(!runArgv({ ...shape, options: ["--init=false"] }).includes("--init"));
  assert.deepEqual(attachRunArgv(shape, "/ids/app.cid").slice(0, 3), ["run", "--cidfile", "/ids/app.cid"]);
  assert.deepEqual(resumeCreateArgv("img", []), [
    "run",
    "-d",
    "--pull=never",
    "--init",
    '--entrypoint=["sleep"]',
    "img",
    "4294967295d",
  ]);
  assert.deepEqual(execArgv("abc", "/usr/bin/app", false, ["x"]), ["exec", "-i", "abc", "/usr/bin/app", "x"]);
  assert.equal(cidFileName("app", "work"), "app@work.cid");
  assert.equal(cidFileName("app", undefined), "app.cid");
});

test("missing volume paths: error naming the path, or left out on request", () => {
  const args = ["--rm", "-v", "/there:/a", "--volume=/missing:/b", "-v", "/gone:/c:ro", "-e", "X=1"];
  const exists = (p: string) => p === "/there";
  assert.throws(() => checkVolumes(args, exists, false), /host path \/missing does not exist/);
  const r = checkVolumes(args, exists, true);
  assert.deepEqual(r.args, ["--rm", "-v", "/there:/a", "-e", "X=1"]);
  assert.deepEqual(r.skipped, ["/missing", "/gone"]);
});

test("provisioning: FROM base, COPY --from each layer then the app; no RUN", () => {
  const file = provisionContainerfile(
    {
      from: "sha-base",
      copyFrom: ["sha-layer", "sha-app"],
      tars: ["include-0.tar"],
      paths: true,
      hostDeps: true,
      key: "k1",
    },
    "lynx",
  );
  assert.equal(
    file,
    [
      "FROM sha-base",
      "COPY --from=sha-layer / /",
      "COPY --from=sha-app / /",
      "COPY host/ /",
      "ADD include-0.tar /",
      "COPY paths/ /",
      "COPY eos-flake-key /usr/share/eos-flake/key",
      'LABEL eos.flake.name="lynx" eos.flake.key="k1"',
      "",
    ].join("\n"),
  );
  assert.doesNotMatch(file, /^RUN/m);
  assert.equal(provisionedImageName("Lynx+X", "k"), "localhost/eos-flake/lynx-x:k");
  assert.deepEqual(parseHostDependencies("# deps\n/etc/hosts\nusr/lib/x\n../etc/shadow\n\n"), [
    "/etc/hosts",
    "/usr/lib/x",
  ]);
});
