import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runEos } from "../helpers/run.ts";

test("fleet --getkey installs the image's credentials into /run with mode 0600", async (t) => {
  const root = await mkdtemp(join(tmpdir(), "eos-fleet-"));
  t.after(() => rm(root, { recursive: true, force: true }));
  const env = { ...process.env, EOS_ROOT: root };
  const missing = await runEos("fleet", ["--getkey"], { env });
  assert.equal(missing.code, 3);
  assert.match(missing.stderr, /no fleet credentials in .*usr\/share\/eos\/fleet/);

  await mkdir(join(root, "usr/share/eos/fleet"), { recursive: true });
  await writeFile(join(root, "usr/share/eos/fleet/id_fleet"), "-----BEGIN OPENSSH PRIVATE KEY-----\nkey\n", {
    mode: 0o644,
  });
  await writeFile(join(root, "usr/share/eos/fleet/token"), "device-token\n", { mode: 0o644 });
  const r = await runEos("fleet", ["--getkey", "--json"], { env });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout.toString()), [
    { what: "SSH key", path: "/run/id_fleet" },
    { what: "update token", path: "/run/eos/fleet-token" },
  ]);
  for (const [path, content] of [
    ["run/id_fleet", "-----BEGIN OPENSSH PRIVATE KEY-----\nkey\n"],
    ["run/eos/fleet-token", "device-token\n"],
  ] as const) {
    assert.equal(await readFile(join(root, path), "utf8"), content);
    assert.equal((await stat(join(root, path))).mode & 0o777, 0o600, path);
  }
  assert.equal((await runEos("fleet", [], { env })).code, 2, "no action is a usage error");
});
