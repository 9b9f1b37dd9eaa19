/**
 * The image's read-only container store (eos build, `containers:`) with real
 * podman: built by the build's own code into a tree, packed as squashfs and
 * mounted read-only as a root slot would be, named in storage.conf as an
 * additional image store. A delta container in the writable store runs on
 * its `basesystem`, and after an "OS update" (the mount now holds a store
 * with a newer basesystem) the flake's next launch runs on the new base.
 *
 * The container's root tar stands in for mmdebstrap's (a cache hit, keyed
 * as the build keys it): the vm tier builds the real one.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { reproducibleTar, treeHash } from "../helpers/tree-files.ts";
import {
  createPodmanFixture,
  importImage,
  podmanSkipReason,
  run,
  type PodmanFixture,
} from "../helpers/podman-fixture.ts";
import { buildContainerStore } from "../../src/io/image/containers.ts";
import { parseImageDescription } from "../../src/core/image/description.ts";
import { containerRootKey, READ_ONLY_STORE } from "../../src/core/image/containers.ts";
import { systemRunner } from "../../src/io/process.ts";
import { rootBuildEnv } from "../../src/io/image/rootfs.ts";

const EPOCH = 1_700_000_000;
const INDEX = Buffer.from("InRelease of a fixed archive state\n");
const skip =
  podmanSkipReason() ??
  (spawnSync("mksquashfs", ["-version"]).error ? "needs mksquashfs (squashfs-tools)" : undefined);

/** A busybox root whose /etc/base-version says which base it is. */
function baseTar(dir: string, version: string): string {
  const root = join(dir, `root-${version}`);
  mkdirSync(join(root, "bin"), { recursive: true });
  mkdirSync(join(root, "etc"), { recursive: true });
  mkdirSync(join(root, "tmp"), { recursive: true, mode: 0o1777 });
  execFileSync("cp", ["/bin/busybox", join(root, "bin", "busybox")]);
  for (const applet of ["sh", "cat", "echo"])
    execFileSync("ln", ["-s", "busybox", join(root, "bin", applet)]);
  writeFileSync(join(root, "etc", "base-version"), `${version}\n`);
  const tar = join(dir, `root-${version}.tar`);
  return reproducibleTar(root, tar, EPOCH);
}

describe("read-only container store (eos build containers:, podman additionalimagestores)", { skip }, () => {
  let fx: PodmanFixture;
  let work: string;
  const mnt = () => join(work, "slot", READ_ONLY_STORE);
  const app = (name: string) => join(fx.flakesDir, "bin", name);

  /** Builds a store holding basesystem from `tar`, as eos build does, into tree; returns the image ID. */
  async function buildStore(tree: string, tar: string): Promise<string> {
    const desc = parseImageDescription(
      "name: T\nversion: '1'\ncontainers:\n  - name: basesystem\n    packages: [busybox]\n    cmd: [/bin/sh]\n",
      "test.yaml",
    );
    const cacheDir = join(work, `cache-${tree.split("/").pop()}`);
    mkdirSync(cacheDir, { recursive: true });
    const key = containerRootKey({
      name: "basesystem",
      suite: desc.distribution.suite,
      mirror: desc.distribution.mirror,
      components: desc.distribution.components,
      architecture: "x86_64",
      packages: ["busybox"],
      sourceDateEpoch: EPOCH,
      archive: { "dists/bookworm/InRelease": createHash("sha256").update(INDEX).digest("hex") },
    });
    execFileSync("cp", [tar, join(cacheDir, `${key.slice(0, 32)}.tar`)]);
    const lines: string[] = [];
    const ids = await buildContainerStore({
      desc,
      base: work,
      architecture: "x86_64",
      tree,
      work: join(work, `build-${tree.split("/").pop()}`),
      sourceDateEpoch: EPOCH,
      cacheDir,
      env: rootBuildEnv(EPOCH),
      log: (l) => lines.push(l),
      proc: systemRunner(),
      fetchIndex: () => Promise.resolve(INDEX),
    });
    assert.ok(
      lines.some((l) => /container basesystem: cache hit/.test(l)),
      lines.join("\n"),
    );
    return ids.get("basesystem") ?? "";
  }

  /** The "root slot": the tree's store as squashfs, mounted read-only where the device has it. */
  function mountSlot(tree: string) {
    const img = `${tree}.squashfs`;
    execFileSync("mksquashfs", [tree, img, "-noappend", "-quiet", "-all-time", String(EPOCH)]);
    spawnSync("umount", [join(work, "slot")]);
    mkdirSync(join(work, "slot"), { recursive: true });
    execFileSync("mount", ["-o", "loop,ro", img, join(work, "slot")]);
  }

  before(async () => {
    fx = await createPodmanFixture("eos-container-store-");
    work = join(fx.dir, "store-work");
    mkdirSync(work, { recursive: true });
    mkdirSync(join(work, "build-treeA"), { recursive: true });
    mkdirSync(join(work, "build-treeA2"), { recursive: true });
    mkdirSync(join(work, "build-treeB"), { recursive: true });
  });
  after(() => {
    if (work) spawnSync("umount", [join(work, "slot")]);
    fx?.cleanup();
  });

  let idA = "";
  test("eos build's store: the same inputs give the same store bytes; nothing of podman's own state in it", async () => {
    const tarA = baseTar(work, "A");
    idA = await buildStore(join(work, "treeA"), tarA);
    const again = await buildStore(join(work, "treeA2"), tarA);
    assert.match(idA, /^[0-9a-f]{64}$/);
    assert.equal(again, idA, "the image ID follows the layer and the epoch, not the clock");
    assert.equal(
      treeHash(join(work, "treeA", READ_ONLY_STORE)),
      treeHash(join(work, "treeA2", READ_ONLY_STORE)),
      "two builds must write byte-identical stores (the root slot stays reproducible)",
    );
    for (const scratch of ["libpod", "tmp", "overlay-containers"])
      assert.ok(!existsSync(join(work, "treeA", READ_ONLY_STORE, scratch)), `${scratch} left in the store`);
  });

  test("a fresh device: basesystem listed read-only; a delta flake on it runs without a pull and provisions into the writable store", async () => {
    mountSlot(join(work, "treeA"));
    writeFileSync(
      fx.storageConf,
      readFileSync(fx.storageConf, "utf8") +
        `\n[storage.options]\nadditionalimagestores = [${JSON.stringify(mnt())}]\n`,
    );
    const listed = fx.podman(["images", "--format", "{{.Repository}}:{{.Tag}} {{.ReadOnly}}"]);
    assert.equal(listed.status, 0, listed.stderr);
    assert.match(listed.stdout, /^localhost\/basesystem:latest true$/m);

    // The seed's lynx-style registration: a delta image loaded into the writable registry.
    importImage(fx, "localhost/lynx-delta", {
      "/usr/bin/lynx": '#!/bin/sh\necho "lynx $* on base $(cat /etc/base-version)"\n',
    });
    const reg = await run(
      fx.flakeCtl,
      [
        "podman",
        "register",
        "--container",
        "localhost/lynx-delta",
        "--target",
        "/usr/bin/lynx",
        "--app",
        app("lynx"),
        "--base",
        "basesystem",
      ],
      { env: fx.env },
    );
    assert.equal(reg.status, 0, reg.stderr);
    const first = await run(app("lynx"), ["-dump"], { env: fx.env, input: "" });
    assert.equal(first.status, 0, first.stderr);
    assert.equal(first.stdout, "lynx -dump on base A\n");

    const writable = fx.podman(["images", "--format", "{{.Repository}} {{.ReadOnly}}"]);
    const provisioned = writable.stdout.split("\n").filter((l) => / false$/.test(l) && !/lynx-delta/.test(l));
    assert.ok(
      provisioned.length >= 1,
      `the provisioned image must be in the writable store:\n${writable.stdout}`,
    );
  });

  test("after an OS update with a newer basesystem, the flake's next launch runs on the new base", async () => {
    const idB = await buildStore(join(work, "treeB"), baseTar(work, "B"));
    assert.notEqual(idB, idA);
    mountSlot(join(work, "treeB"));
    const next = await run(app("lynx"), ["-dump"], { env: fx.env, input: "" });
    assert.equal(next.status, 0, next.stderr);
    assert.equal(next.stdout, "lynx -dump on base B\n");
  });
});
