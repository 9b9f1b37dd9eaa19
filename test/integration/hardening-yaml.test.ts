/**
 * Issue 11 (hardening), findings 6 and 7, as a user meets them: every command
 * that reads YAML answers a broken or hostile file with its CONFIG error
 * naming the file (exit 3), never an internal error (exit 70); a NAME.d
 * fragment cannot smuggle a podman option in as the image name.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runEos } from "../helpers/run.ts";

let dir: string;
before(async () => (dir = await mkdtemp(join(tmpdir(), "eos-hardening-yaml-"))));
after(async () => rm(dir, { recursive: true, force: true }));

function aliasBomb(): string {
  const lines = ["a: &a [x, x, x, x, x, x, x, x, x]"];
  for (let i = 1; i < 10; i++) {
    const prev = String.fromCharCode(96 + i);
    const name = String.fromCharCode(97 + i);
    lines.push(`${name}: &${name} [${Array(9).fill(`*${prev}`).join(", ")}]`);
  }
  return `${lines.join("\n")}\n`;
}

const BROKEN: Array<[string, string, RegExp]> = [
  ["unresolved", "update: *x\n", /invalid YAML: Unresolved alias/],
  ["bomb", aliasBomb(), /invalid YAML: Excessive alias count/],
  ["circular", "update: &a [*a]\n", /an alias refers to a list or mapping that contains it/],
  ["big", `update: {}\n# ${"x".repeat(1024 * 1024)}\n`, /larger than the limit of 1048576 bytes \(1 MiB\)/],
];

const COMMANDS: Array<[string, (file: string) => string[]]> = [
  ["os-update", (file) => ["--check", "--config", file]],
  ["os-update-server", (file) => ["fetch", "--config", file]],
  ["eos", (file) => ["build", file, "--out", join(dir, "out")]],
];

for (const [command, args] of COMMANDS) {
  test(`${command}: broken YAML is a CONFIG error naming the file, exit 3`, async () => {
    for (const [name, text, pattern] of BROKEN) {
      const file = join(dir, `${command}-${name}.yml`);
      await writeFile(file, text);
      const r = await runEos(command, args(file));
      assert.doesNotMatch(r.stderr, /internal error/, `${name}: ${r.stderr}`);
      assert.equal(r.code, 3, `${name}: ${r.stderr}`);
      assert.match(r.stderr, /error \[CONFIG\]/, name);
      assert.ok(r.stderr.includes(`${file}: `), `${name} names the file: ${r.stderr}`);
      assert.match(r.stderr, pattern, name);
    }
  });
}

test("flake-ctl: a broken flakes.yml is a CONFIG error naming it", async () => {
  for (const [name, text, pattern] of BROKEN) {
    const file = join(dir, `flakes-${name}.yml`);
    await writeFile(file, text.replace(/^update:/, "generic:"));
    const r = await runEos("flake-ctl", ["list"], { env: { ...process.env, FLAKES_CONFIG: file } });
    assert.doesNotMatch(r.stderr, /internal error/, r.stderr);
    assert.equal(r.code, 3, r.stderr);
    assert.ok(r.stderr.includes(`${file}: `), r.stderr);
    assert.match(r.stderr, pattern);
  }
});

test("flake-ctl podman show: a NAME.d fragment with container.__proto__ is refused, naming it", async () => {
  const flakesDir = join(dir, "flakes");
  await mkdir(join(flakesDir, "app.d"), { recursive: true });
  const config = join(dir, "flakes.yml");
  await writeFile(config, `generic:\n  flakes_dir: ${flakesDir}\n`);
  await writeFile(join(flakesDir, "app.yaml"), "container:\n  host_app_path: /usr/bin/app\n");
  const fragment = join(flakesDir, "app.d", "10.yaml");
  await writeFile(fragment, "container:\n  __proto__:\n    name: --privileged\n");
  const env = { ...process.env, FLAKES_CONFIG: config, EOS_FLAKES_NO_CACHE: "1" };
  const r = await runEos("flake-ctl", ["podman", "show", "app", "--json"], { env });
  assert.doesNotMatch(r.stdout.toString(), /--privileged/);
  assert.equal(r.code, 3, r.stderr);
  assert.match(r.stderr, /error \[CONFIG\]/);
  assert.ok(r.stderr.includes(`${fragment}: key container.__proto__ is not allowed`), r.stderr);
});
