/**
 * The seed's `fleet`: eos build's store code puts a `fleet` container (one
 * layer on basesystem with the root's credentials) into the read-only store
 * and registers the `fleet` flake in the tree; on the "device" (a temporary
 * root, the store as a read-only squashfs named as an additional image
 * store) `fleet --getkey` runs the real flake through podman-pilot's launch
 * and real podman, and falls back to the direct copy where podman cannot run.
 *
 * /run of the device is a directory of the test: the command runs in a
 * mount namespace of its own where that directory is /run, so the flake's
 * mounts (absolute host paths) land there and not in this machine's /run.
 * basesystem's root tar is a busybox tree standing in for mmdebstrap's (a
 * cache hit, keyed as the build keys it): the vm tier builds the real one.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { execFileSync, spawnSync } from "node:child_process";
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { reproducibleTar, treeHash } from "../helpers/tree-files.ts";
import {
  bundleBin,
  createPodmanFixture,
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
const KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nfleet-key-from-the-image\n";
const TOKEN = "fleet-token-from-the-image\n";
const skip =
  podmanSkipReason() ??
  (spawnSync("mksquashfs", ["-version"]).error ? "needs mksquashfs (squashfs-tools)" : undefined) ??
  (spawnSync("unshare", ["--version"]).error ? "needs unshare (util-linux)" : undefined);

const DESCRIPTION = [
  "name: T",
  "version: '1'",
  "containers:",
  "  - name: basesystem",
  "    packages: [busybox]",
  "    cmd: [/bin/sh]",
  "fleet:",
  "  base: basesystem",
  "",
].join("\n");

function baseTar(dir: string): string {
  const root = join(dir, "base-root");
  for (const d of ["bin", "etc", "usr/lib", "usr/share", "run"])
    mkdirSync(join(root, d), { recursive: true });
  mkdirSync(join(root, "tmp"), { recursive: true, mode: 0o1777 });
  execFileSync("cp", ["/bin/busybox", join(root, "bin", "busybox")]);
  for (const applet of ["sh", "cat", "echo", "ls"]) symlinkSync("busybox", join(root, "bin", applet));
  const tar = join(dir, "base-root.tar");
  return reproducibleTar(root, tar, EPOCH);
}

describe("the fleet container and flake (eos build fleet:, fleet --getkey)", { skip }, () => {
  let fx: PodmanFixture;
  let work: string;
  let fleetBin: string;
  /** The device: its /run, its root copy of the credentials, the store (a link to the mounted slot). */
  let device: string;
  const slot = () => join(work, "slot");

  async function build(tree: string): Promise<{ ids: Map<string, string>; log: string[] }> {
    const desc = parseImageDescription(DESCRIPTION, "test.yaml");
    mkdirSync(join(tree, "usr/share/eos/fleet"), { recursive: true });
    writeFileSync(join(tree, "usr/share/eos/fleet/id_fleet"), KEY, { mode: 0o600 });
    writeFileSync(join(tree, "usr/share/eos/fleet/token"), TOKEN, { mode: 0o600 });
    mkdirSync(join(tree, "etc"), { recursive: true });
    writeFileSync(
      join(tree, "etc/flakes.yml"),
      "generic:\n  flakes_dir: /usr/share/flakes\n  podman_ids_dir: /tmp/flakes\n",
    );
    // As in the image: flakes_dir is a link into the writable registry, which is not there at build time.
    mkdirSync(join(tree, "usr/share"), { recursive: true });
    if (!existsSync(join(tree, "usr/share/flakes")) && !lstatSync(join(tree, "usr/share")).isSymbolicLink())
      symlinkSync("/var/lib/containers/storage/flakes", join(tree, "usr/share/flakes"));
    const cacheDir = join(work, "cache");
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
    const cached = join(cacheDir, `${key.slice(0, 32)}.tar`);
    if (!existsSync(cached)) execFileSync("cp", [baseTar(work), cached]);
    const log: string[] = [];
    const buildWork = join(work, `build-${tree.split("/").pop()}`);
    mkdirSync(buildWork, { recursive: true });
    const ids = await buildContainerStore({
      desc,
      base: work,
      architecture: "x86_64",
      tree,
      work: buildWork,
      sourceDateEpoch: EPOCH,
      cacheDir,
      env: rootBuildEnv(EPOCH),
      log: (l) => log.push(l),
      proc: systemRunner(),
      fetchIndex: () => Promise.resolve(INDEX),
    });
    return { ids, log };
  }

  /** `fleet ARGS` on the device, with DEVICE/run as its /run; PILOT_DEBUG shows podman's argv. */
  function fleet(args: string[], env: NodeJS.ProcessEnv = {}) {
    const cmd = [
      "--mount",
      "--propagation",
      "private",
      "/bin/sh",
      "-c",
      '/usr/bin/mount --bind "$0/run" /run && exec "$@"',
      device,
      process.execPath,
      fleetBin,
      ...args,
    ];
    return run("/usr/bin/unshare", cmd, {
      env: { ...fx.env, EOS_ROOT: device, PILOT_DEBUG: "1", ...env },
      input: "",
    });
  }

  before(async () => {
    fx = await createPodmanFixture("eos-fleet-flake-");
    work = join(fx.dir, "fleet-work");
    mkdirSync(work, { recursive: true });
    fleetBin = await bundleBin("fleet", fx.binDir);
  });
  after(() => {
    if (work) spawnSync("umount", [slot()]);
    fx?.cleanup();
  });

  test("eos build: a fleet container (one layer on basesystem) and the fleet flake, reproducible", async () => {
    const a = await build(join(work, "treeA"));
    const b = await build(join(work, "treeB"));
    const id = a.ids.get("fleet");
    assert.match(id ?? "", /^[0-9a-f]{64}$/, a.log.join("\n"));
    assert.equal(b.ids.get("fleet"), id, "the fleet image ID follows its inputs, not the clock");
    assert.equal(
      treeHash(join(work, "treeA", READ_ONLY_STORE)),
      treeHash(join(work, "treeB", READ_ONLY_STORE)),
      "two builds must write byte-identical stores",
    );
    const store = join(work, "treeA", READ_ONLY_STORE);
    const layers = JSON.parse(readFileSync(join(store, "overlay-layers/layers.json"), "utf8")) as {
      id: string;
      parent?: string;
    }[];
    const images = JSON.parse(readFileSync(join(store, "overlay-images/images.json"), "utf8")) as {
      id: string;
      names: string[];
      layer: string;
    }[];
    const base = images.find((i) => i.names.includes("localhost/basesystem:latest"));
    const fleetImage = images.find((i) => i.names.includes("localhost/fleet:latest"));
    assert.ok(base && fleetImage, JSON.stringify(images));
    assert.equal(layers.length, 2, "basesystem's layer is stored once; fleet adds one layer");
    assert.equal(
      layers.find((l) => l.id === fleetImage.layer)?.parent,
      base.layer,
      "fleet is a layer on basesystem",
    );
    const diff = join(store, "overlay", fleetImage.layer, "diff");
    assert.equal(readFileSync(join(diff, "usr/share/eos/fleet/id_fleet"), "utf8"), KEY);
    assert.equal(readFileSync(join(diff, "usr/share/eos/fleet/token"), "utf8"), TOKEN);
    const flakeFile = join(work, "treeA", "usr/share/eos/flakes/fleet.yaml");
    const flake = readFileSync(flakeFile, "utf8");
    assert.equal(flake, readFileSync(join(work, "treeB", "usr/share/eos/flakes/fleet.yaml"), "utf8"));
    assert.equal(
      readlinkSync(join(work, "treeA", "usr/share/flakes")),
      "/var/lib/containers/storage/flakes",
      "the image's flakes_dir stays the registry's",
    );
    const flakesYml = readFileSync(join(work, "treeA", "usr/share/eos/flakes.yml"), "utf8");
    assert.match(flakesYml, /^ {2}flakes_dir: \/usr\/share\/eos\/flakes$/m);
    assert.match(flakesYml, /^ {2}podman_ids_dir: \/tmp\/flakes$/m, "the rest is the image's flakes.yml");
    assert.match(flake, /host_app_path: \/usr\/bin\/fleet/);
    assert.match(flake, /name: localhost\/fleet:latest/);
  });

  test("fleet --getkey runs the fleet flake through podman-pilot: /run/id_fleet and /run/eos/fleet-token, 0600", async () => {
    const tree = join(work, "treeA");
    const img = join(work, "slot.squashfs");
    execFileSync("mksquashfs", [tree, img, "-noappend", "-quiet", "-all-time", String(EPOCH)]);
    mkdirSync(slot(), { recursive: true });
    execFileSync("mount", ["-o", "loop,ro", img, slot()]);
    writeFileSync(
      fx.storageConf,
      readFileSync(fx.storageConf, "utf8") +
        `\n[storage.options]\nadditionalimagestores = [${JSON.stringify(join(slot(), READ_ONLY_STORE))}]\n`,
    );
    writeFileSync(
      fx.flakesConfig,
      readFileSync(fx.flakesConfig, "utf8").replace(
        /flakes_dir: .*/,
        `flakes_dir: ${join(slot(), "usr/share/eos/flakes")}`,
      ),
    );
    device = join(work, "device");
    mkdirSync(join(device, "run"), { recursive: true });
    mkdirSync(join(device, "usr/share/containers"), { recursive: true });
    symlinkSync(join(slot(), READ_ONLY_STORE), join(device, READ_ONLY_STORE));
    // The root's own copy differs here, so the test sees which way the files came.
    mkdirSync(join(device, "usr/share/eos/fleet"), { recursive: true });
    writeFileSync(join(device, "usr/share/eos/fleet/id_fleet"), "root copy of the key\n", { mode: 0o600 });
    writeFileSync(join(device, "usr/share/eos/fleet/token"), "root copy of the token\n", { mode: 0o600 });
    // A stale target with a loose mode: the flake's run replaces its content, and it ends 0600.
    mkdirSync(join(device, "run/eos"), { recursive: true });
    writeFileSync(join(device, "run/eos/fleet-token"), "stale token, longer than the new one\n");
    chmodSync(join(device, "run/eos/fleet-token"), 0o644);

    const t0 = performance.now();
    const r = await fleet(["--getkey"]);
    const firstMs = performance.now() - t0;
    assert.equal(r.status, 0, r.stderr);
    assert.equal(
      r.stdout,
      "SSH key installed at /run/id_fleet\nupdate token installed at /run/eos/fleet-token\n",
    );
    assert.doesNotMatch(r.stderr, /copying directly/);
    const podmanRun = r.stderr.split("\n").find((l) => /podman-pilot: debug: podman run /.test(l)) ?? "";
    assert.match(podmanRun, /localhost\/fleet:latest/, r.stderr);
    // What the container sees of the host: the two target files, nothing else.
    const volumes = [...podmanRun.matchAll(/--volume (\S+)/g)].map((m) => m[1]);
    assert.deepEqual(volumes, [
      "/run/id_fleet:/run/id_fleet:rw",
      "/run/eos/fleet-token:/run/eos/fleet-token:rw",
    ]);
    assert.match(podmanRun, /--network none/);
    for (const [path, content] of [
      ["run/id_fleet", KEY],
      ["run/eos/fleet-token", TOKEN],
    ] as const) {
      assert.equal(readFileSync(join(device, path), "utf8"), content, `${path} comes from the container`);
      assert.equal(statSync(join(device, path)).mode & 0o777, 0o600, path);
    }
    const json = await fleet(["--getkey", "--json"]);
    assert.equal(json.status, 0, json.stderr);
    assert.deepEqual(JSON.parse(json.stdout), [
      { what: "SSH key", path: "/run/id_fleet" },
      { what: "update token", path: "/run/eos/fleet-token" },
    ]);

    rmSync(join(device, "run/id_fleet"));
    const direct = await fleet(["--getkey", "--direct"]);
    assert.equal(direct.status, 0, direct.stderr);
    assert.equal(readFileSync(join(device, "run/id_fleet"), "utf8"), "root copy of the key\n");

    // Figures, not assertions: wall time of each way (mount namespace and node start included).
    const median = async (args: string[]) => {
      const ms: number[] = [];
      for (let i = 0; i < 3; i++) {
        const t = performance.now();
        assert.equal((await fleet(args, { PILOT_DEBUG: "" })).status, 0);
        ms.push(performance.now() - t);
      }
      return ms.sort((a, b) => a - b)[1] as number;
    };
    const flakeMs = await median(["--getkey"]);
    const directMs = await median(["--getkey", "--direct"]);
    process.stdout.write(
      `# fleet --getkey (median of 3): flake ${flakeMs.toFixed(0)} ms, direct ${directMs.toFixed(0)} ms (×${(flakeMs / directMs).toFixed(1)}); first flake call ${firstMs.toFixed(0)} ms\n`,
    );
  });

  test("without the flake registry (podman's graphroot on the root's overlayfs): the container's graph goes to /run", async () => {
    // As on a device whose p.spare is not active: /var/lib/containers/storage is in the overlay root.
    const graph = join(device, "var/lib/containers/storage");
    const flakesConfig = readFileSync(fx.flakesConfig, "utf8");
    assert.match(flakesConfig, /podman_storage_conf: /);
    const layers = join(work, "overlay-root");
    for (const d of ["lower", "upper", "work"]) mkdirSync(join(layers, d), { recursive: true });
    mkdirSync(graph, { recursive: true });
    execFileSync("mount", [
      "-t",
      "overlay",
      "overlay",
      "-o",
      `lowerdir=${join(layers, "lower")},upperdir=${join(layers, "upper")},workdir=${join(layers, "work")}`,
      graph,
    ]);
    try {
      rmSync(join(device, "run"), { recursive: true, force: true });
      mkdirSync(join(device, "run"));
      // The flakes' storage.conf names the overlay graphroot, as the image's does.
      writeFileSync(
        join(work, "device-storage.conf"),
        `[storage]\ndriver = "overlay"\ngraphroot = "${graph}"\nrunroot = "${join(device, "run/containers/storage")}"\n\n[storage.options]\nadditionalimagestores = [${JSON.stringify(join(device, READ_ONLY_STORE))}]\n`,
      );
      writeFileSync(
        fx.flakesConfig,
        flakesConfig.replace(
          /podman_storage_conf: .*/,
          `podman_storage_conf: ${join(work, "device-storage.conf")}`,
        ),
      );
      const r = await fleet(["--getkey"], { CONTAINERS_STORAGE_CONF: "" });
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /\/var\/lib\/containers\/storage is on overlayfs .*graph is in \/run/);
      assert.doesNotMatch(r.stderr, /copying directly/);
      assert.equal(
        readFileSync(join(device, "run/id_fleet"), "utf8"),
        KEY,
        "the key comes from the container",
      );
      assert.equal(statSync(join(device, "run/id_fleet")).mode & 0o777, 0o600);
      // podman kept its graph in /run and left the overlay alone (this host's kernel would take
      // an overlay graph there; Debian 12's 6.1 refuses it, which the vm tier's update test meets).
      assert.ok(existsSync(join(device, "run/eos/fleet-containers/overlay")), "the graph in /run");
      assert.deepEqual(readdirSync(join(layers, "upper")), [], "nothing written to the overlay graphroot");
      assert.match(
        readFileSync(join(device, "run/eos/fleet-storage.conf"), "utf8"),
        new RegExp(`graphroot = "${join(device, "run/eos/fleet-containers")}"`),
      );
    } finally {
      writeFileSync(fx.flakesConfig, flakesConfig);
      execFileSync("umount", [graph]);
    }
  });

  test("without podman (PATH), without the store, or when podman fails: today's direct copy, same targets and modes", async () => {
    const cases: [string, NodeJS.ProcessEnv, () => void, RegExp][] = [
      [
        "no podman on PATH",
        { PATH: "/nonexistent" },
        () => undefined,
        /podman is not installed: copying directly/,
      ],
      [
        "podman fails (the store is not named in storage.conf)",
        { CONTAINERS_STORAGE_CONF: join(fx.dir, "storage-without-store.conf") },
        () =>
          writeFileSync(
            join(fx.dir, "storage-without-store.conf"),
            `[storage]\ndriver = "overlay"\ngraphroot = "${fx.dir}/storage"\nrunroot = "${fx.dir}/run"\n`,
          ),
        /flake did not run \(podman exit 125\): copying directly/,
      ],
      ["no read-only store", {}, () => rmSync(join(device, READ_ONLY_STORE)), /no read-only container store/],
    ];
    for (const [what, env, prepare, note] of cases) {
      prepare();
      rmSync(join(device, "run"), { recursive: true, force: true });
      mkdirSync(join(device, "run"));
      const r = await fleet(["--getkey"], env);
      assert.equal(r.status, 0, `${what}: ${r.stderr}`);
      assert.match(r.stderr, note, what);
      assert.equal(
        r.stdout,
        "SSH key installed at /run/id_fleet\nupdate token installed at /run/eos/fleet-token\n",
      );
      for (const [path, content] of [
        ["run/id_fleet", "root copy of the key\n"],
        ["run/eos/fleet-token", "root copy of the token\n"],
      ] as const) {
        assert.equal(readFileSync(join(device, path), "utf8"), content, `${what}: ${path}`);
        assert.equal(statSync(join(device, path)).mode & 0o777, 0o600, `${what}: ${path}`);
      }
    }
  });
});
