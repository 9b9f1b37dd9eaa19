import { test } from "node:test";
import assert from "node:assert/strict";
import {
  assertFlakeName,
  assertHostPath,
  checkSpec,
  deepMerge,
  isSafeFlakeName,
  sortFragmentNames,
  FLAKES_CONFIG_DEFAULTS,
  type Spec,
} from "../../src/core/flakes/flake-config.ts";
import { expandPercentVars, parsePilotArgs } from "../../src/core/flakes/pilot-args.ts";
import { loadFlakeDocuments, parseFlakesConfig, parseYamlMapping } from "../../src/core/flakes/flake-yaml.ts";
import { EosError } from "../../src/core/errors.ts";

test("flakes.yml: flake-pilot's keys, defaults for missing ones", () => {
  const c = parseFlakesConfig(
    "generic:\n  flakes_dir: /srv/flakes\n  podman_ids_dir: ~\n",
    "/etc/flakes.yml",
  );
  assert.equal(c.flakesDir, "/srv/flakes");
  assert.equal(c.podmanIdsDir, FLAKES_CONFIG_DEFAULTS.podmanIdsDir);
  assert.equal(c.podmanStorageConf, "/etc/flakes/storage.conf");
  assert.deepEqual(parseFlakesConfig("", "/etc/flakes.yml"), FLAKES_CONFIG_DEFAULTS);
});

test("flakes.yml: unknown keys and relative paths name file and key", () => {
  assert.throws(
    () => parseFlakesConfig("generic:\n  flake_dir: /x\n", "/etc/flakes.yml"),
    /\/etc\/flakes\.yml: unknown key generic\.flake_dir/,
  );
  assert.throws(
    () => parseFlakesConfig("generic:\n  flakes_dir: relative\n", "/etc/flakes.yml"),
    /\/etc\/flakes\.yml: generic\.flakes_dir: must be an absolute path/,
  );
});

test("invalid YAML names the file and line", () => {
  assert.throws(() => parseYamlMapping("a: [1\nb: 2\n", "/f/x.yaml"), /\/f\/x\.yaml: invalid YAML/);
  assert.throws(() => parseYamlMapping("- a\n- b\n", "/f/x.yaml"), /top level must be a mapping/);
  assert.throws(() => parseYamlMapping("a: 1\na: 2\n", "/f/x.yaml"), /invalid YAML/);
});

test("deep merge: mappings merge, lists and scalars are replaced, later wins", () => {
  const base = {
    container: { name: "a", runtime: { resume: false, podman: ["-x"] } },
    include: { tar: ["/t"] },
  };
  const over = { container: { runtime: { podman: ["-e A=1"] } } };
  assert.deepEqual(structuredClone(deepMerge(base, over)), {
    container: { name: "a", runtime: { resume: false, podman: ["-e A=1"] } },
    include: { tar: ["/t"] },
  });
  assert.deepEqual(structuredClone(deepMerge({ a: { b: 1 } }, { a: null })), { a: null });
  assert.deepEqual(structuredClone(deepMerge({ a: 1 }, { b: 2 })), { a: 1, b: 2 });
});

const spec: Spec = {
  type: "map",
  required: ["top"],
  fields: {
    top: { type: "map", required: ["name"], fields: { name: { type: "string" }, on: { type: "boolean" } } },
  },
};

test("schema: unknown key in a fragment names that fragment; required keys checked on the merge", () => {
  const docs = [
    { file: "/f/app.yaml", text: "top:\n  name: x\n" },
    { file: "/f/app.d/10.yaml", text: "top:\n  onn: true\n" },
  ];
  assert.throws(() => loadFlakeDocuments(docs, spec), /\/f\/app\.d\/10\.yaml: unknown key top\.onn/);
  assert.throws(
    () => loadFlakeDocuments([{ file: "/f/app.yaml", text: "top:\n  on: true\n" }], spec),
    /missing required key top\.name/,
  );
  // A fragment may be partial; the merge has the name.
  const merged = loadFlakeDocuments(
    [
      { file: "/f/app.yaml", text: "top:\n  name: x\n" },
      { file: "/f/app.d/10.yaml", text: "top:\n  on: true\n" },
    ],
    spec,
  );
  assert.deepEqual(structuredClone(merged), { top: { name: "x", on: true } });
  assert.throws(() => checkSpec({ top: { on: "yes" } }, spec, "f", ""), /top\.on: must be true or false/);
  try {
    checkSpec({ top: 3 }, spec, "f", "");
    assert.fail("must throw");
  } catch (error) {
    assert.ok(error instanceof EosError);
    assert.equal(error.code, "CONFIG");
  }
});

test("fragments are read in sorted order, .yaml and .yml (flake-pilot read every file in NAME.d)", () => {
  assert.deepEqual(sortFragmentNames(["b.yaml", "a.yaml", "10.yaml", "x.yml", ".hidden.yaml", "README"]), [
    "10.yaml",
    "a.yaml",
    "b.yaml",
    "x.yml",
  ]);
});

test("names: no path tricks", () => {
  for (const good of ["lynx", "python3.11", "g++", "a_b-c"]) assert.ok(isSafeFlakeName(good), good);
  for (const bad of ["", ".", "..", "a/b", "../x", "a..b", "-rf", " x", "a\nb"])
    assert.ok(!isSafeFlakeName(bad), bad);
  assert.throws(() => assertFlakeName("../etc"), /not allowed/);
  assert.equal(assertHostPath("/usr/bin/lynx", "--app"), "/usr/bin/lynx");
  for (const bad of ["usr/bin/x", "/usr/../etc/x", "/usr//x", "/", "/usr/./x"]) {
    assert.throws(() => assertHostPath(bad, "--app"), /--app/);
  }
});

test("pilot args: @NAME and known %options anywhere; the rest in order for the app", () => {
  const known = ["remove", "interactive", "port"];
  const p = parsePilotArgs(["-a", "@work", "%remove", "b", "%port:8080", "%s", "@@x"], known);
  assert.equal(p.instance, "work");
  assert.equal(p.options.get("remove"), true);
  assert.equal(p.options.get("port"), "8080");
  assert.deepEqual(p.appArgs, ["-a", "b", "%s", "@@x"]);
  // `curl -d @/tmp/x`: not an instance name, passed on
  assert.deepEqual(parsePilotArgs(["-d", "@/tmp/x"], known).appArgs, ["-d", "@/tmp/x"]);
  // only the first @NAME is the instance
  assert.deepEqual(parsePilotArgs(["@a", "@b"], known).appArgs, ["@b"]);
});

test("%VAR expansion: upper-case names from the caller's environment; unset is an error", () => {
  assert.equal(expandPercentVars("-v %HOME:/root", { HOME: "/home/u" }), "-v /home/u:/root");
  assert.equal(expandPercentVars("--name=%USER_%ID", { USER_: "x", ID: "1" }), "--name=x1");
  assert.equal(expandPercentVars("--format=%s", {}), "--format=%s");
  assert.throws(() => expandPercentVars("-v %NOPE:/x", {}), /%NOPE, which is not set/);
});

test("pilots find their flake from argv[0], or from the first argument when called by name", async () => {
  const { flakeNameFromInvocation } = await import("../../src/core/flakes/pilot-args.ts");
  assert.deepEqual(flakeNameFromInvocation("podman-pilot", "/usr/bin/lynx", ["-dump"]), {
    name: "lynx",
    args: ["-dump"],
  });
  assert.deepEqual(flakeNameFromInvocation("podman-pilot", "/usr/lib/eos/podman-pilot.mjs", ["lynx", "x"]), {
    name: "lynx",
    args: ["x"],
  });
  assert.throws(
    () => flakeNameFromInvocation("firecracker-pilot", "/x/firecracker-pilot", []),
    /usage: firecracker-pilot FLAKE/,
  );
  assert.throws(() => flakeNameFromInvocation("podman-pilot", "/x/podman-pilot", ["../etc"]));
});
