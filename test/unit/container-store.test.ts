/** The description's `containers:` and the pure parts of the image's read-only container store. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { parseImageDescription } from "../../src/core/image/description.ts";
import {
  READ_ONLY_STORE,
  containerMmdebstrapArgv,
  containerRootKey,
  ociImageFiles,
  stableLinkName,
  storageConf,
  type ContainerRootInputs,
} from "../../src/core/image/containers.ts";
import { rootFiles } from "../../src/core/image/root-files.ts";

const parse = (yaml: string) => parseImageDescription(`name: T\nversion: "1"\n${yaml}`, "img.yaml");

test("containers: packages or an archive, named safely, unique", () => {
  const d = parse(
    "containers:\n  - name: basesystem\n    packages: [busybox]\n  - name: fleet\n    archive: fleet.oci\n",
  );
  assert.deepEqual(
    d.containers.map((c) => [c.name, c.packages, c.archive, c.cmd]),
    [
      ["basesystem", ["busybox"], undefined, ["/bin/bash"]],
      ["fleet", undefined, "fleet.oci", ["/bin/bash"]],
    ],
  );
  assert.deepEqual(parse("").containers, []);
  for (const [yaml, message] of [
    [
      "containers:\n  - name: Base\n    packages: []\n",
      /img\.yaml: containers\[0\]\.name: must be a container name/,
    ],
    ["containers:\n  - name: ../x\n    packages: []\n", /containers\[0\]\.name/],
    ["containers:\n  - name: b\n", /containers\[0\]: give either packages .* or archive/],
    ["containers:\n  - name: b\n    packages: []\n    archive: a\n", /give either packages/],
    [
      "containers:\n  - name: b\n    packages: []\n  - name: b\n    packages: []\n",
      /container names must be unique/,
    ],
    [
      "containers:\n  - name: b\n    packages: ['x; rm -rf /']\n",
      /containers\[0\]\.packages\[0\]: must be a Debian package name/,
    ],
    ["containers:\n  - name: b\n    archive: ../../etc/shadow\n", /containers\[0\]\.archive/],
  ] as const)
    assert.throws(
      () => parse(yaml),
      (e: Error) => message.test(e.message),
      yaml,
    );
});

test("a store in the image gets a storage.conf naming it; an image without containers keeps podman's defaults", () => {
  const files = (yaml: string) =>
    rootFiles(parse(yaml), {
      keyNames: [],
      commands: [],
      nodePath: undefined,
      updateCommitUnit: "",
      architecture: "x86_64",
    });
  const conf = files("containers:\n  - name: b\n    packages: []\n").find(
    (f) => f.path === "/etc/containers/storage.conf",
  );
  assert.equal(conf?.content, storageConf());
  assert.match(storageConf(), /^graphroot = "\/var\/lib\/containers\/storage"$/m);
  assert.match(storageConf(), new RegExp(`^additionalimagestores = \\["${READ_ONLY_STORE}"\\]$`, "m"));
  assert.equal(
    files("").find((f) => f.path === "/etc/containers/storage.conf"),
    undefined,
  );
});

test("the OCI image around a layer is the same for the same inputs; the epoch and the layer change its ID", () => {
  const layer = { sha256: "a".repeat(64), size: 10 };
  const id = (f: ReturnType<typeof ociImageFiles>) => JSON.stringify([...f.blobs.keys()]);
  const one = ociImageFiles(layer, "x86_64", 1_700_000_000, ["/bin/sh"]);
  assert.equal(id(ociImageFiles(layer, "x86_64", 1_700_000_000, ["/bin/sh"])), id(one));
  assert.notEqual(id(ociImageFiles(layer, "x86_64", 1_700_000_001, ["/bin/sh"])), id(one));
  assert.notEqual(
    id(ociImageFiles({ ...layer, sha256: "b".repeat(64) }, "x86_64", 1_700_000_000, ["/bin/sh"])),
    id(one),
  );
  for (const [digest, content] of one.blobs)
    assert.equal(
      createHash("sha256").update(content).digest("hex"),
      digest,
      "blobs are named by their sha256",
    );
  const config = [...one.blobs.values()]
    .map((c) => JSON.parse(c) as Record<string, unknown>)
    .find((c) => "rootfs" in c);
  assert.equal(config?.architecture, "amd64");
  assert.equal(config?.created, "2023-11-14T22:13:20.000Z");
  const arm = [...ociImageFiles(layer, "aarch64", 1, ["/bin/sh"]).blobs.values()].map(
    (c) => JSON.parse(c) as Record<string, unknown>,
  );
  assert.ok(arm.some((c) => c.architecture === "arm64"));
});

test("container roots: keyed by what mmdebstrap gets and the archive state, not by the container's name", () => {
  const inputs: ContainerRootInputs = {
    name: "basesystem",
    suite: "bookworm",
    mirror: "http://deb.debian.org/debian",
    components: ["main"],
    architecture: "x86_64",
    packages: ["busybox"],
    sourceDateEpoch: 1,
    archive: { "dists/bookworm/InRelease": "0".repeat(64) },
  };
  const key = containerRootKey(inputs);
  assert.equal(containerRootKey({ ...inputs, name: "other" }), key);
  for (const change of [
    { packages: ["bash"] },
    { sourceDateEpoch: 2 },
    { architecture: "aarch64" as const },
    { archive: {} },
  ])
    assert.notEqual(containerRootKey({ ...inputs, ...change }), key, JSON.stringify(change));
  const argv = containerMmdebstrapArgv(inputs, "/out.tar");
  assert.deepEqual(argv.slice(0, 3), ["mmdebstrap", "--mode=root", "--variant=minbase"]);
  assert.ok(argv.includes("--include=busybox") && argv.includes("--format=tar"));
  assert.deepEqual(argv.slice(-3), ["bookworm", "/out.tar", "http://deb.debian.org/debian"]);
  assert.ok(
    containerMmdebstrapArgv({ ...inputs, architecture: "aarch64" }, "/o").includes("--architectures=arm64"),
  );
  assert.ok(
    !containerMmdebstrapArgv({ ...inputs, packages: [] }, "/o").some((a) => a.startsWith("--include")),
  );
});

test("overlay link names follow the layer ID: 26 characters of containers/storage's alphabet", () => {
  const a = stableLinkName("982bc111");
  assert.match(a, /^[A-Z2-7]{26}$/);
  assert.equal(stableLinkName("982bc111"), a);
  assert.notEqual(stableLinkName("982bc112"), a);
});
