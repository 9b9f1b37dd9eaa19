/**
 * The update server image (images/update-server.yaml), booted in QEMU with
 * swtpm, serving a fleet: issue 13 item 3. One boot:
 *  - first boot: the registry partition is set up and holds the server's
 *    state (published images, tokens, TLS key, configuration), bind-mounted
 *    where the units expect it; serve answers HTTPS with the certificate the
 *    first boot made;
 *  - the operator's steps from the README: the images to fetch in
 *    /etc/os-update-server.yml, `systemctl start os-fetch`, a device token,
 *    a fleet key; the server fetches v2 from an origin on the host;
 *  - a device (os-update on this host against a disk file, as the
 *    integration tier's devices) updates from v1 to v2 over HTTPS, and
 *    another over SSH as the fleet user, whose key can do nothing else.
 * Not in the vm tier: building this second image costs CI 10-25 min. Run it
 * with `TIERS=vm-long npm test` (or `npm run test:vm-long`).
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFile, mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import type { Vm } from "../../src/io/machine/qemu.ts";
import { makeDevice } from "../helpers/device.ts";
import { partitionBytes } from "../helpers/sample-image.ts";
import { makeWorld, releaseImage, type World } from "../helpers/server-world.ts";
import { BOOT_TIMEOUT_MS, startTestVm } from "../helpers/vm.ts";
import { VM_TMP, testImage, vmSkipReason, type TestImage } from "../helpers/vm-image.ts";

const NAME = "EOS-fleet";
const STATE = "/var/lib/os-update-server";

let skip = vmSkipReason();
if (!skip && spawnSync("sh", ["-c", "command -v swtpm"]).status !== 0) skip = "swtpm is not installed";
if (skip) process.stdout.write(`# vm-long (update server image) skipped: ${skip}\n`);

interface Manifest {
  version: string;
  partitions: { root: { sha256: string; size: number } };
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe("the update server image serves a fleet (QEMU + swtpm)", { skip, timeout: 60 * 60_000 }, () => {
  let image: TestImage;
  let world: World;
  let work: string;
  let vm: Vm;
  let tunnel: ChildProcess | undefined;
  let v1: { raw: string; manifest: Manifest };
  let v2: Manifest;
  const timings: string[] = [];
  const timed = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    const t0 = performance.now();
    const result = await fn();
    timings.push(`${what} ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    return result;
  };

  before(async () => {
    image = await timed("image", () => testImage({ description: "images/update-server.yaml" }));
    world = await makeWorld();
    // A fresh checkout has no .tmp/vm/run yet (startTestVm makes it, later).
    await mkdir(join(VM_TMP, "run"), { recursive: true });
    work = await mkdtemp(join(VM_TMP, "run", "update-server-"));
    // The device's v1 and the origin's v2, signed with the release key the server image trusts.
    const v1Raw = await releaseImage(world, NAME, "1.0.0", { key: image.releaseKey, seed: "fleet" });
    v1 = {
      raw: join(work, "v1.raw"),
      manifest: JSON.parse(await readFile(`${v1Raw}.manifest.json`, "utf8")),
    };
    await copyFile(v1Raw, v1.raw);
    const v2Raw = await releaseImage(world, NAME, "2.0.0", { key: image.releaseKey, seed: "fleet" });
    v2 = JSON.parse(await readFile(`${v2Raw}.manifest.json`, "utf8")) as Manifest;
    vm = await timed("boot", async () => {
      // A disk larger than the image, as a server's is: p.spare grows into it at the first boot.
      const diskBytes = (await stat(image.raw)).size + 1024 ** 3;
      const started = await startTestVm(undefined, image, { tpm: true, memoryMiB: 1024, diskBytes });
      await started.waitForSsh({ timeoutMs: BOOT_TIMEOUT_MS });
      return started;
    });
  });

  after(async () => {
    tunnel?.kill();
    await vm?.kill();
    await world?.origin.close();
    if (work && !process.env.EOS_VM_KEEP) await rm(work, { recursive: true, force: true });
    if (world) await rm(world.dir, { recursive: true, force: true });
    process.stdout.write(`# update server image: ${timings.join(", ")}\n`);
  });

  it("keeps its state on the encrypted registry partition and serves HTTPS from the first boot", async () => {
    // Units may still be starting when SSH answers.
    await vm.sshOk(["systemctl", "is-system-running", "--wait"], { timeoutMs: 300_000 }).catch(() => "");
    for (const unit of ["registry-rw", "eos-server-storage", "os-update-server"])
      assert.equal(
        (await vm.ssh(["systemctl", "is-active", `${unit}.service`])).stdout.trim(),
        "active",
        unit,
      );
    // One-shots that ran and ended: the certificate (first boot only), and os-fetch with no images yet.
    for (const unit of ["eos-server-tls", "os-fetch"]) {
      const shown = await vm.sshOk(["systemctl", "show", "-p", "Result,ExecMainStatus", `${unit}.service`]);
      assert.match(shown, /^Result=success$/m, `${unit}: ${shown}`);
      assert.match(shown, /^ExecMainStatus=0$/m, `${unit}: ${shown}`);
    }
    assert.equal(
      (await vm.sshOk(["systemctl", "--failed", "--no-legend", "--plain"])).trim(),
      "",
      "no unit failed",
    );
    const registry = await vm.sshOk(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "/var/lib/containers/storage"]);
    assert.match(registry, /^\/dev\/mapper\/\S+\s+xfs$/m, "the registry (LUKS2 + XFS) is mounted");
    const images = await vm.sshOk(["findmnt", "-n", "-o", "SOURCE", "/srv/www/fleet/os-images"]);
    assert.match(
      images,
      /mapper\/.*\[\/eos-update-server\/os-images\]/,
      "a bind mount from the registry's XFS",
    );
    const state = await vm.sshOk(["findmnt", "-n", "-o", "SOURCE", STATE]);
    assert.match(state, /mapper\/.*\[\/eos-update-server\/state\]/);
    assert.equal(
      (await vm.sshOk(["readlink", "/etc/os-update-server.yml"])).trim(),
      `${STATE}/os-update-server.yml`,
    );
    assert.equal((await vm.sshOk(["stat", "-c", "%a", `${STATE}/tls/key.pem`])).trim(), "600");
    // The image has no curl: its own Node, trusting the first boot's certificate and nothing else added.
    const health = await vm.ssh([
      ...["env", `NODE_EXTRA_CA_CERTS=${STATE}/tls/cert.pem`, "node", "-e"],
      'fetch("https://localhost/health").then((r) => process.exit(r.ok ? 0 : 1), (e) => { console.error(e); process.exit(2); })',
    ]);
    assert.equal(health.code, 0, health.stderr);
  });

  it("fetches v2 from the origin as the README says: the images in /etc/os-update-server.yml, then os-fetch", async () => {
    const config = await vm.sshOk(["cat", "/etc/os-update-server.yml"]);
    const origin = world.origin.url.replace("127.0.0.1", "10.0.2.2");
    await vm.sshOk(["tee", `${STATE}/os-update-server.yml`], {
      input: config.replace("update: []", `update:\n  - image: ${origin}/${NAME}.raw.xz\n    name: ${NAME}`),
    });
    await timed("fetch", () => vm.sshOk(["systemctl", "start", "os-fetch.service"], { timeoutMs: 600_000 }));
    const listing = await vm.sshOk(["ls", "/srv/www/fleet/os-images"]);
    assert.match(listing, new RegExp(`${NAME}`));
    assert.equal(
      (await vm.ssh(["systemctl", "is-active", `os-update-daemon@${NAME}.timer`])).stdout.trim(),
      "active",
    );
  });

  it("a device on v1 updates to v2 from the server VM over HTTPS", async () => {
    const cert = join(work, "server-cert.pem");
    await writeFile(cert, await vm.sshOk(["cat", `${STATE}/tls/cert.pem`]));
    const token = (
      await vm.sshOk(["os-update-server", "token", "add", "device-1", "--tokens-dir", `${STATE}/tokens`])
    ).trim();
    // The guest's 443 on this host, through the VM's SSH port (user-mode networking forwards SSH only).
    const port = await freePort();
    tunnel = spawn("ssh", [
      ...["-i", image.sshKey, "-p", String(vm.sshPort), "-N", "-o", "ExitOnForwardFailure=yes"],
      ...["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"],
      ...["-L", `${port}:127.0.0.1:443`, "root@127.0.0.1"],
    ]);
    await new Promise((resolve) => setTimeout(resolve, 3000));
    const device = await makeDevice(v1.raw, v1.manifest, {
      config: `update:\n  name: ${NAME}\n  url: https://127.0.0.1:${port}\n  ca: ${cert}\n`,
      keys: [image.releasePub],
      token,
    });
    try {
      await device.boot("A");
      const apply = await timed("apply over https", () => device.run(["--apply"]));
      assert.equal(apply.code, 0, apply.stderr);
      await slotBIsV2(device.image);
    } finally {
      await device.close();
    }
  });

  it("a device updates over SSH as the fleet user, whose key runs only the forced command", async () => {
    const fleetKey = join(work, "id_fleet");
    assert.equal(spawnSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", fleetKey]).status, 0);
    await vm.sshOk(["tee", "-a", `${STATE}/fleet_authorized_keys`], {
      input: await readFile(`${fleetKey}.pub`),
    });
    const knownHosts = join(work, "known_hosts");
    const scan = spawnSync("ssh-keyscan", ["-p", String(vm.sshPort), "-t", "ed25519", "127.0.0.1"]);
    await writeFile(knownHosts, scan.stdout);
    const sshAs = (command: string) =>
      spawnSync("ssh", [
        ...["-i", fleetKey, "-p", String(vm.sshPort), "-o", `UserKnownHostsFile=${knownHosts}`],
        ...["-o", "BatchMode=yes", "fleet@127.0.0.1", command],
      ]);
    const shadow = sshAs("cat /etc/shadow");
    assert.notEqual(shadow.status, 0, "a fleet key reads nothing but published images");
    assert.doesNotMatch(shadow.stdout.toString(), /root:/);
    const device = await makeDevice(v1.raw, v1.manifest, {
      config:
        `update:\n  name: ${NAME}\n  server: fleet@127.0.0.1\n  port: ${vm.sshPort}\n` +
        `  pkey: ${fleetKey}\n  known_hosts: ${knownHosts}\n`,
      keys: [image.releasePub],
    });
    try {
      await device.boot("A");
      const apply = await timed("apply over ssh", () => device.run(["--apply"]));
      assert.equal(apply.code, 0, apply.stderr);
      await slotBIsV2(device.image);
    } finally {
      await device.close();
    }
  });

  async function slotBIsV2(disk: string): Promise<void> {
    const slotB = await partitionBytes(disk, "p.lxrootclone1");
    const sha = createHash("sha256").update(slotB.subarray(0, v2.partitions.root.size)).digest("hex");
    assert.equal(sha, v2.partitions.root.sha256, "slot B holds v2, as its signed manifest says");
  }
});
