import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { tarArchive } from "../../src/core/tar.ts";
import {
  FLEET_CREDENTIALS,
  fleetFlake,
  fleetGetkeyScript,
  fleetLayerTar,
  fleetPodmanOptions,
  presentCredentials,
} from "../../src/core/image/fleet.ts";
import { ociImageFiles } from "../../src/core/image/containers.ts";
import { parseContainerFlake, renderContainerFlake } from "../../src/core/flakes/flake-yaml.ts";
import { needsProvisioning } from "../../src/core/flakes/container.ts";
import { parseImageDescription } from "../../src/core/image/description.ts";

interface Parsed {
  name: string;
  mode: number;
  uid: number;
  size: number;
  mtime: number;
  type: string;
  content: Buffer;
}

/** A ustar reader as strict as GNU tar about the checksum. */
function readTar(buf: Buffer): Parsed[] {
  const out: Parsed[] = [];
  let off = 0;
  for (;;) {
    const h = buf.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break;
    const field = (start: number, len: number) =>
      h.toString("ascii", start, start + len).replace(/\0.*$/s, "");
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : (h[i] as number);
    assert.equal(parseInt(field(148, 8), 8), sum, `checksum of ${field(0, 100)}`);
    assert.equal(h.toString("ascii", 257, 265), "ustar\u000000");
    const size = parseInt(field(124, 12), 8);
    out.push({
      name: field(0, 100),
      mode: parseInt(field(100, 8), 8),
      uid: parseInt(field(108, 8), 8),
      size,
      mtime: parseInt(field(136, 12), 8),
      type: field(156, 1),
      content: buf.subarray(off + 512, off + 512 + size),
    });
    off += 512 + Math.ceil(size / 512) * 512;
  }
  assert.equal(buf.length, off + 1024, "two zero blocks end the archive, nothing after");
  return out;
}

const KEY = { file: "id_fleet", mode: 0o600, content: Buffer.from("ssh key\n") };
const TOKEN = { file: "token", mode: 0o640, content: Buffer.from("t".repeat(700)) };

test("tarArchive: ustar entries owned by root, dated at the epoch, padded; the same entries give the same bytes", () => {
  const entries = [
    { path: "usr", type: "dir" as const, mode: 0o755 },
    { path: "usr/f", type: "file" as const, mode: 0o644, content: Buffer.from("x".repeat(513)) },
  ];
  const tar = tarArchive(entries, 1_700_000_000);
  assert.deepEqual(tar, tarArchive(entries, 1_700_000_000));
  assert.notDeepEqual(tar, tarArchive(entries, 1_700_000_001));
  const parsed = readTar(tar);
  assert.deepEqual(
    parsed.map((p) => [p.name, p.type, p.mode, p.uid, p.size, p.mtime]),
    [
      ["usr/", "5", 0o755, 0, 0, 1_700_000_000],
      ["usr/f", "0", 0o644, 0, 513, 1_700_000_000],
    ],
  );
  assert.equal(parsed[1]?.content.toString(), "x".repeat(513));
  for (const path of ["/etc/passwd", "a/../../etc", ""])
    assert.throws(() => tarArchive([{ path, type: "dir", mode: 0o755 }], 0), /relative path/);
});

test("the fleet layer: the credentials the root has (their modes) and the app, nothing else", () => {
  const all = readTar(fleetLayerTar([KEY, TOKEN], 1_700_000_000));
  const files = all.filter((e) => e.type === "0");
  assert.deepEqual(
    files.map((f) => [f.name, f.mode]),
    [
      ["usr/share/eos/fleet/id_fleet", 0o600],
      ["usr/share/eos/fleet/token", 0o640],
      ["usr/lib/eos/fleet-getkey", 0o755],
    ],
  );
  assert.equal(files[0]?.content.toString(), "ssh key\n");
  assert.equal(files[1]?.content.toString(), "t".repeat(700));
  for (const d of all.filter((e) => e.type === "5")) assert.equal(d.mode, 0o755, d.name);
  const keyOnly = readTar(fleetLayerTar([KEY], 1_700_000_000)).map((e) => e.name);
  assert.ok(!keyOnly.includes("usr/share/eos/fleet/token"));
});

test("the container's app writes only the targets of the credentials the image has, and refuses unmounted ones", () => {
  const both = fleetGetkeyScript(presentCredentials([KEY, TOKEN]));
  assert.match(both, /^#!\/bin\/sh\n/);
  assert.match(both, /copy id_fleet \/run\/id_fleet "SSH key"/);
  assert.match(both, /copy token \/run\/eos\/fleet-token "update token"/);
  assert.match(both, /if \[ ! -f "\$2" \]; then/);
  const keyOnly = fleetGetkeyScript(presentCredentials([KEY]));
  assert.doesNotMatch(keyOnly, /fleet-token/);
});

test("the fleet flake: what flake-ctl would write, a plain launch that mounts just the target files", () => {
  const creds = presentCredentials([KEY, TOKEN]);
  assert.deepEqual(creds, [...FLEET_CREDENTIALS]);
  const text = renderContainerFlake(fleetFlake(creds));
  const flake = parseContainerFlake([{ file: "/usr/share/flakes/fleet.yaml", text }]);
  assert.equal(flake.name, "localhost/fleet:latest");
  assert.equal(flake.hostAppPath, "/usr/bin/fleet");
  assert.equal(flake.targetAppPath, "/usr/lib/eos/fleet-getkey");
  assert.equal(needsProvisioning(flake), false, "the image is complete: nothing is built at launch");
  assert.deepEqual(flake.runtime.podman, fleetPodmanOptions(creds));
  const volumes = (flake.runtime.podman ?? []).filter((o) => o.startsWith("--volume"));
  assert.deepEqual(volumes, [
    "--volume /run/id_fleet:/run/id_fleet:rw",
    "--volume /run/eos/fleet-token:/run/eos/fleet-token:rw",
  ]);
  assert.ok(flake.runtime.podman?.includes("--network none"));
  assert.ok(flake.runtime.podman?.includes("--read-only"));
  assert.deepEqual(
    fleetPodmanOptions(presentCredentials([KEY])).filter((o) => o.startsWith("--volume")),
    ["--volume /run/id_fleet:/run/id_fleet:rw"],
  );
});

test("ociImageFiles: a layer on a base lists the base's layer first; one layer keeps its old form", () => {
  const base = { sha256: "a".repeat(64), size: 10 };
  const top = { sha256: "b".repeat(64), size: 2 };
  const config = (f: ReturnType<typeof ociImageFiles>) =>
    [...f.blobs.values()].map((v) => JSON.parse(v) as Record<string, unknown>).find((v) => "rootfs" in v);
  const two = ociImageFiles([base, top], "x86_64", 1_700_000_000, ["/x"], ["base", "fleet"]);
  assert.deepEqual((config(two)?.rootfs as { diff_ids: string[] }).diff_ids, [
    `sha256:${base.sha256}`,
    `sha256:${top.sha256}`,
  ]);
  assert.deepEqual(
    [...ociImageFiles([base], "x86_64", 1, ["/x"]).blobs.keys()],
    [...ociImageFiles(base, "x86_64", 1, ["/x"]).blobs.keys()],
  );
  assert.throws(() => ociImageFiles([base, top], "x86_64", 1, ["/x"]), /needs as many history entries/);
});

test("description: fleet.base names a container built from packages; the name fleet is the fleet container's", () => {
  const parse = (text: string) => parseImageDescription(`name: T\nversion: '1'\n${text}`, "t.yaml");
  const ok = parse("containers:\n  - name: basesystem\n    packages: []\nfleet:\n  base: basesystem\n");
  assert.deepEqual(ok.fleet, { base: "basesystem" });
  assert.equal(parse("").fleet, undefined);
  assert.throws(() => parse("fleet:\n  base: basesystem\n"), /fleet\.base.*built from packages/s);
  assert.throws(
    () => parse("containers:\n  - name: b\n    archive: b.tar\nfleet:\n  base: b\n"),
    /fleet\.base.*built from packages/s,
  );
  assert.throws(
    () =>
      parse(
        "containers:\n  - name: basesystem\n    packages: []\n  - name: fleet\n    packages: []\nfleet:\n  base: basesystem\n",
      ),
    /the name fleet is the fleet container's/,
  );
  const image = parseImageDescription(readFileSync("images/default.yaml", "utf8"), "images/default.yaml");
  assert.deepEqual(image.fleet, { base: "basesystem" }, "the default image ships the fleet container");
});
