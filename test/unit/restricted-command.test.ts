import { test } from "node:test";
import assert from "node:assert/strict";
import { parseRestrictedCommand } from "../../src/core/server/restricted-command.ts";

const DIRS = ["/srv/www/fleet/os-images"];

test("the original client's forms are understood", () => {
  assert.deepEqual(
    parseRestrictedCommand("sudo cat /srv/www/fleet/os-images/EOS.x86_64-AB-TW.raw.dev", DIRS),
    {
      ok: true,
      request: { kind: "read", name: "EOS.x86_64-AB-TW", what: "root", offset: 0 },
    },
  );
  assert.deepEqual(parseRestrictedCommand("sudo cat /srv/www/fleet/os-images/EOS.raw.firmware", DIRS), {
    ok: true,
    request: { kind: "read", name: "EOS", what: "firmware", offset: 0 },
  });
  assert.deepEqual(parseRestrictedCommand("test -e /srv/www/fleet/os-images/EOS.raw", DIRS), {
    ok: true,
    request: { kind: "test", name: "EOS" },
  });
  assert.deepEqual(parseRestrictedCommand("cat /srv/www/fleet/os-images/EOS.manifest.json.sig", DIRS), {
    ok: true,
    request: { kind: "read", name: "EOS", what: "signature", offset: 0 },
  });
});

test("eos-read takes a resume offset", () => {
  assert.deepEqual(parseRestrictedCommand("eos-read EOS root 1048576", DIRS), {
    ok: true,
    request: { kind: "read", name: "EOS", what: "root", offset: 1048576 },
  });
});

test("eos-read takes an end for the root and firmware streams: the zero tail is not sent", () => {
  assert.deepEqual(parseRestrictedCommand("eos-read EOS root 4096 12697600", DIRS), {
    ok: true,
    request: { kind: "read", name: "EOS", what: "root", offset: 4096, end: 12697600 },
  });
  for (const command of [
    "eos-read EOS root 4096 100",
    "eos-read EOS manifest 0 10",
    "eos-read EOS root 0 1 2",
    "eos-read EOS firmware 0 -1",
  ])
    assert.equal(parseRestrictedCommand(command, DIRS).ok, false, command);
});

test("hostile commands are refused with a reason", () => {
  const hostile = [
    "",
    "   ",
    "sudo cat /etc/shadow",
    "cat /srv/www/fleet/os-images/../../../etc/shadow",
    "cat /srv/www/fleet/os-images/EOS.raw.dev; rm -rf /",
    "cat /srv/www/fleet/os-images/$(id).raw.dev",
    "cat /srv/www/fleet/os-images/`id`.raw.dev",
    "cat /srv/www/fleet/os-images/EOS.raw.dev | sh",
    "cat /srv/www/fleet/os-images/EOS.raw.dev > /tmp/x",
    "cat /srv/www/fleet/os-images/EOS.raw.dev /etc/shadow",
    "cat /srv/www/fleet/os-images/sub/EOS.raw.dev",
    "cat /srv/www/fleet/os-images/.versions",
    "cat  /srv/www/fleet/os-images/EOS.raw.dev",
    "sudo sh -c id",
    "sudo -u root cat /srv/www/fleet/os-images/EOS.raw.dev",
    "test -e /etc/shadow",
    "eos-read ../etc root",
    "eos-read EOS passwd",
    "eos-read EOS root -5",
    "eos-read EOS root 12 extra",
    "scp -f /etc/shadow",
    "cat /srv/www/fleet/os-images/EOS.raw.dev\nid",
    `cat /srv/www/fleet/os-images/${"A".repeat(2000)}.raw.dev`,
  ];
  for (const command of hostile) {
    const result = parseRestrictedCommand(command, DIRS);
    assert.equal(result.ok, false, `must refuse ${JSON.stringify(command)}`);
    if (!result.ok) assert.ok(result.reason.length > 0);
  }
  assert.equal(parseRestrictedCommand(undefined, DIRS).ok, false);
});

test("eos-read NAME chunks asks for the chunk index, and takes nothing after it", () => {
  assert.deepEqual(parseRestrictedCommand("eos-read EOS chunks", DIRS), {
    ok: true,
    request: { kind: "chunks", name: "EOS" },
  });
  for (const command of ["eos-read EOS chunks 0", "eos-read ../x chunks", "eos-read EOS chunk"])
    assert.equal(parseRestrictedCommand(command, DIRS).ok, false, command);
});
