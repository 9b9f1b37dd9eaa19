/**
 * Issue 11 (hardening), findings 6 and 7: prototype keys in flake YAML are
 * refused by name, merges cannot reach a prototype, required keys are own
 * keys; YAML alias errors and oversized files are CONFIG errors naming the
 * file, in every parser a command uses.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { checkSpec, deepMerge, mergeFlakeDocuments } from "../../src/core/flakes/flake-config.ts";
import {
  parseContainerFlake,
  parseFlakesConfig,
  parseYamlMapping,
} from "../../src/core/flakes/flake-yaml.ts";
import { containerFlakeSpec } from "../../src/core/flakes/container.ts";
import { deviceConfigSchema, parseYamlConfig, serverConfigSchema } from "../../src/core/config.ts";
import { parseImageDescription } from "../../src/core/image/description.ts";
import { vmFlakeFromDocuments } from "../../src/core/flakes/vm.ts";
import { EosError } from "../../src/core/errors.ts";

const MiB = 1024 * 1024;

function configError(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof EosError, `an EosError, got ${String(error)}`);
    assert.equal(error.code, "CONFIG");
    assert.match(error.message, pattern);
    return true;
  });
}

const base = { file: "/f/app.yaml", text: "container:\n  host_app_path: /usr/bin/app\n" };

test("a NAME.d fragment with container.__proto__ is refused, naming the fragment and the key", () => {
  const fragment = { file: "/f/app.d/10.yaml", text: "container:\n  __proto__:\n    name: --privileged\n" };
  configError(
    () => parseContainerFlake([base, fragment]),
    /\/f\/app\.d\/10\.yaml: key container\.__proto__ is not allowed/,
  );
  const flow = { file: "/f/app.d/20.yaml", text: "container: {__proto__: {name: --privileged}}\n" };
  configError(() => parseContainerFlake([base, flow]), /20\.yaml: key container\.__proto__ is not allowed/);
});

test("constructor and prototype keys are refused in flake files and flakes.yml", () => {
  const ctor = { file: "/f/app.d/10.yaml", text: "container:\n  constructor: x\n" };
  configError(() => parseContainerFlake([base, ctor]), /10\.yaml: key container\.constructor is not allowed/);
  configError(
    () => parseFlakesConfig("generic:\n  prototype: {}\n", "/etc/flakes.yml"),
    /\/etc\/flakes\.yml: key generic\.prototype is not allowed/,
  );
  const vm = JSON.parse('{"vm": {"name": "x", "constructor": 1}}') as Record<string, unknown>;
  configError(
    () => vmFlakeFromDocuments([{ file: "/f/vm.yaml", data: vm }]),
    /\/f\/vm\.yaml: key vm\.constructor is not allowed/,
  );
});

test("the schema check refuses prototype keys in data that did not come through YAML", () => {
  const data = JSON.parse(
    '{"container": {"host_app_path": "/usr/bin/app", "__proto__": {"name": "--privileged"}}}',
  ) as Record<string, unknown>;
  configError(
    () => mergeFlakeDocuments([{ file: "/f/app.yaml", data }], containerFlakeSpec),
    /\/f\/app\.yaml: key container\.__proto__ is not allowed/,
  );
  const ctor = JSON.parse('{"container": {"constructor": {"type": "map"}}}') as Record<string, unknown>;
  configError(
    () => checkSpec(ctor, containerFlakeSpec, "/f/x.yaml", ""),
    /key container\.constructor is not allowed/,
  );
});

test("merging never changes a prototype; required keys must be the object's own", () => {
  const override = JSON.parse('{"container": {"__proto__": {"name": "--privileged"}}}') as unknown;
  const merged = deepMerge({ container: { host_app_path: "/usr/bin/app" } }, override) as Record<
    string,
    Record<string, unknown>
  >;
  const container = merged.container as Record<string, unknown>;
  assert.equal(Object.getPrototypeOf(container), null);
  assert.equal(Object.getPrototypeOf(merged), null);
  assert.equal(({} as Record<string, unknown>).name, undefined, "Object.prototype untouched");
  assert.notEqual(Reflect.get(container, "name"), "--privileged");
  const inherited = {
    container: Object.create({ name: "--privileged", host_app_path: "/usr/bin/app" }) as object,
  };
  configError(
    () => checkSpec(inherited, containerFlakeSpec, "/f/app.yaml", "", true),
    /missing required key container\.name/,
  );
});

const ALIAS_CASES: Array<[string, string, RegExp]> = [
  ["unresolved alias", "update: *x\n", /invalid YAML: Unresolved alias/],
  ["alias bomb", aliasBomb(), /invalid YAML: Excessive alias count/],
  ["circular alias", "update: &a [*a]\n", /an alias refers to a list or mapping that contains it/],
];

function aliasBomb(): string {
  const lines = ["a: &a [x, x, x, x, x, x, x, x, x]"];
  for (let i = 1; i < 10; i++) {
    const prev = String.fromCharCode(96 + i);
    const name = String.fromCharCode(97 + i);
    lines.push(`${name}: &${name} [${Array(9).fill(`*${prev}`).join(", ")}]`);
  }
  return `${lines.join("\n")}\n`;
}

test("YAML alias errors are CONFIG errors naming the file, in every config parser", () => {
  const parsers: Array<[string, (text: string, file: string) => unknown]> = [
    ["device os-update.yml", (t, f) => parseYamlConfig(t, f, deviceConfigSchema)],
    ["server os-update.yml", (t, f) => parseYamlConfig(t, f, serverConfigSchema)],
    ["image description", parseImageDescription],
    ["flakes.yml", parseFlakesConfig],
    ["flake file", (t, f) => parseContainerFlake([{ file: f, text: t }])],
    ["NAME.d fragment", (t, f) => parseContainerFlake([base, { file: f, text: t }])],
  ];
  for (const [what, parse] of parsers) {
    for (const [kind, text, pattern] of ALIAS_CASES) {
      const file = `/etc/${what.replace(/\W+/g, "-")}.yml`;
      configError(
        () => parse(text, file),
        new RegExp(`^${file.replace(/[.]/g, "\\.")}: .*${pattern.source}`),
      );
      void kind;
    }
  }
});

test("a config file over 1 MiB is refused, naming the file and the limit", () => {
  const big = `name: EOS\nversion: '1'\n# ${"x".repeat(MiB)}\n`;
  configError(
    () => parseImageDescription(big, "/img/big.yaml"),
    /^\/img\/big\.yaml: \d+ bytes, larger than the limit of 1048576 bytes \(1 MiB\)/,
  );
  configError(
    () => parseYamlMapping(big, "/f/big.yaml"),
    /^\/f\/big\.yaml: .*larger than the limit of 1048576 bytes/,
  );
  configError(
    () => parseYamlConfig(big, "/etc/os-update.yml", deviceConfigSchema),
    /os-update\.yml: .*1048576 bytes/,
  );
});

test("duplicate keys are still refused (also 1 and '1'), and keys must be plain values", () => {
  configError(
    () => parseYamlMapping("a: 1\nb: 2\na: 3\n", "/f/x.yaml"),
    /x\.yaml: invalid YAML at line 3: Map keys must be unique/,
  );
  configError(() => parseYamlMapping("1: a\n'1': b\n", "/f/x.yaml"), /Map keys must be unique/);
  configError(
    () => parseYamlMapping("? [a]\n: 1\n", "/f/x.yaml"),
    /x\.yaml: invalid YAML at line 1: a key must be a plain value/,
  );
  assert.deepEqual(parseYamlMapping("a: &x {b: 1}\nc: *x\n", "/f/x.yaml"), { a: { b: 1 }, c: { b: 1 } });
});

test("parseYamlMapping and parseYamlConfig refuse prototype keys themselves, at any depth", () => {
  configError(
    () => parseYamlMapping("a:\n  - {constructor: 1}\n", "/f/x.yaml"),
    /^\/f\/x\.yaml: key a\[0\]\.constructor is not allowed/,
  );
  configError(
    () =>
      parseYamlConfig(
        "update:\n  name: EOS\n  __proto__: {server: evil}\n",
        "/etc/os-update.yml",
        deviceConfigSchema,
      ),
    /^\/etc\/os-update\.yml: key update\.__proto__ is not allowed/,
  );
});

test("names inherited by every object are unknown keys, not schema entries", () => {
  const fragment = { file: "/f/app.d/10.yaml", text: "container:\n  toString: 1\n" };
  configError(() => parseContainerFlake([base, fragment]), /10\.yaml: unknown key container\.toString/);
});

test("only a base's own keys merge", () => {
  const inherited = Object.create({ k: { a: 1 } }) as Record<string, unknown>;
  assert.deepEqual(structuredClone(deepMerge(inherited, { k: { b: 2 } })), { k: { b: 2 } });
});

test("a dict of named entries refuses prototype keys too", () => {
  const spec = { type: "map", fields: { named: { type: "dict", value: { type: "string" } } } } as const;
  configError(
    () => checkSpec(JSON.parse('{"named": {"__proto__": "x"}}'), spec, "/f/d.yaml", ""),
    /\/f\/d\.yaml: key named\.__proto__ is not allowed/,
  );
});
