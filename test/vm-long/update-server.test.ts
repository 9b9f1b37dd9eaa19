/**
 * The update server image (images/update-server.yaml) and an EOS device
 * (images/default.yaml), two QEMU guests on one link between them: issue 13
 * item 3. One boot of each:
 *  - the server's first boot: the registry partition (swtpm) is set up and
 *    holds the server's state (published images, tokens, TLS key,
 *    configuration), bind-mounted where the units expect it; serve answers
 *    HTTPS with the certificate the first boot made;
 *  - the operator's steps from the README: the images to fetch in
 *    /etc/os-update-server.yml, `systemctl start os-fetch`, a device token,
 *    a fleet key; the server fetches the device's v2 from an origin on the host;
 *  - the device guest, on v1, reaches the server only over the link (a QEMU
 *    socket netdev, the server's name in /etc/hosts): `os-update --check` and
 *    `--apply` over HTTPS pinning the server's first-boot certificate, kexec
 *    into slot B, update_commit.service commits; `--rollback --reboot`; then
 *    the same over SSH as the fleet user, whose key can do nothing else.
 * Not in the vm tier: building the server image costs CI 10-25 min. Run it
 * with `TIERS=vm-long npm test` (or `npm run test:vm-long`).
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { Vm } from "../../src/io/machine/qemu.ts";
import { freePort } from "../../src/io/machine/host.ts";
import { LOGIN_PROMPT } from "../../src/core/machine/qemu-machine.ts";
import { guestState, waitForCommit } from "../../src/io/demo-guest.ts";
import { makeWorld, releaseImage, type World } from "../helpers/server-world.ts";
import { BOOT_TIMEOUT_MS, startTestVm } from "../helpers/vm.ts";
import { VM_TEST_IMAGE, VM_TMP, testImage, vmSkipReason, type TestImage } from "../helpers/vm-image.ts";

const NAME = "EOS";
const V2 = "2.0.0-test";
const STATE = "/var/lib/os-update-server";
/** The link between the guests: the server's host name resolves to its address there. */
const SERVER = { mac: "52:54:00:e0:5e:01", address: "192.168.76.1", name: "eos-update" };
const DEVICE = { mac: "52:54:00:e0:5e:02", address: "192.168.76.2" };

let skip = vmSkipReason();
if (!skip && spawnSync("sh", ["-c", "command -v swtpm"]).status !== 0) skip = "swtpm is not installed";
if (skip) process.stdout.write(`# vm-long (update server image) skipped: ${skip}\n`);

/** Gives the guest's NIC with this MAC a static address (a runtime networkd file ahead of the DHCP one). */
async function linkUp(vm: Vm, mac: string, address: string): Promise<void> {
  const network = `[Match]\nMACAddress=${mac}\n\n[Network]\nAddress=${address}/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n`;
  await vm.sshOk(["mkdir", "-p", "/run/systemd/network"]);
  await vm.sshOk(["tee", "/run/systemd/network/10-eos-link.network"], { input: network });
  await vm.sshOk(["networkctl", "reload"]);
  // A link networkd already configured (DHCP on en*) takes the new file only when reconfigured.
  const byMac = `for n in /sys/class/net/*; do [ "$(cat $n/address)" = ${mac} ] && networkctl reconfigure \${n##*/}; done; true`;
  await vm.sshOk(["sh", "-c", byMac]);
  for (let i = 0; ; i++) {
    if ((await vm.sshOk(["ip", "-4", "-o", "addr"])).includes(`inet ${address}/`)) return;
    if (i > 30) throw new Error(`the guest link never got ${address}`);
    await sleep(1000);
  }
}

/** Waits for the listening QEMU's socket so that the connecting one finds it. */
async function waitForListen(port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const ss = spawnSync("ss", ["-Hltn", `sport = :${port}`]);
    if (ss.stdout.toString().includes(`:${port}`)) return;
    await sleep(100);
  }
  throw new Error(`nothing listens on 127.0.0.1:${port}`);
}

describe(
  "the update server image serves an EOS device guest (QEMU + swtpm)",
  { skip, timeout: 60 * 60_000 },
  () => {
    let image: TestImage;
    let deviceImage: TestImage;
    let world: World;
    let work: string;
    let server: Vm;
    let device: Vm;
    const timings: string[] = [];
    const timed = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
      const t0 = performance.now();
      const result = await fn();
      timings.push(`${what} ${((performance.now() - t0) / 1000).toFixed(0)} s`);
      return result;
    };

    /** What a device boot forgets (/etc and /run are tmpfs): its link, the server's name, its credentials. */
    const prepareDevice = async (files: Record<string, string>): Promise<void> => {
      await linkUp(device, DEVICE.mac, DEVICE.address);
      await device.sshOk(["sh", "-c", `echo '${SERVER.address} ${SERVER.name}' >> /etc/hosts`]);
      await device.sshOk(["mkdir", "-p", "/run/eos"]);
      for (const [path, content] of Object.entries(files)) {
        await device.sshOk(["sh", "-c", 'umask 077 && cat > "$1"', "sh", path], { input: content });
      }
    };

    /** The running slot, from the kernel command line. */
    const slot = async () => /eos\.slot=([AB])/.exec(await device.sshOk(["cat", "/proc/cmdline"]))?.[1];

    /** --apply, the kexec'd boot (prepared again), update_commit.service; the new state. */
    const applyAndCommit = async (files: Record<string, string>) => {
      const mark = device.mark();
      // The kexec ends the SSH session: its exit code is the connection's, the boot after it tells.
      const apply = await device.ssh(["os-update", "--apply"], { timeoutMs: 20 * 60_000 });
      await device.waitForConsole(LOGIN_PROMPT, { timeoutMs: BOOT_TIMEOUT_MS, since: mark });
      await device.waitForSsh({ timeoutMs: BOOT_TIMEOUT_MS });
      await prepareDevice(files);
      const commit = await waitForCommit(device, 5 * 60_000);
      return { apply, commit, state: await guestState(device) };
    };

    /** v2 running from slot B, committed, on a trial boot that --apply started; --check finds nothing newer. */
    const assertOnV2 = (r: Awaited<ReturnType<typeof applyAndCommit>>) => {
      assert.equal(r.commit, "active (success)", `${r.apply.stdout}${r.apply.stderr}`);
      assert.equal(r.state.version, V2);
      assert.equal(r.state.slot, "B");
      assert.match(r.state.cmdline, /COMMIT_UPDATE/, "the kexec of --apply");
      assert.equal(r.state.grubenv.eos_default, "B", "committed: slot B is the default");
      assert.equal(r.state.checkExit, 0, "up to date with the server");
    };

    before(async () => {
      image = await timed("server image", () => testImage({ description: "images/update-server.yaml" }));
      deviceImage = await timed("device images", async () => {
        await testImage({ version: V2 });
        return testImage(VM_TEST_IMAGE);
      });
      world = await makeWorld();
      // A fresh checkout has no .tmp/vm/run yet (startTestVm makes it, later).
      await mkdir(join(VM_TMP, "run"), { recursive: true });
      work = await mkdtemp(join(VM_TMP, "run", "update-server-"));
      // The device's v2 at the origin, signed with the release key both images trust.
      const v2 = await testImage({ version: V2 });
      await timed("publish v2", () => releaseImage(world, NAME, V2, { key: image.releaseKey, disk: v2.raw }));
      const link = await freePort();
      server = await timed("server boot", async () => {
        // A disk larger than the image, as a server's is: p.spare grows into it at the first boot.
        const diskBytes = (await stat(image.raw)).size + 2 * 1024 ** 3;
        const started = await startTestVm(undefined, image, {
          tpm: true,
          memoryMiB: 1024,
          diskBytes,
          machine: { guestLink: { role: "listen", port: link, mac: SERVER.mac } },
        });
        await waitForListen(link);
        device = await startTestVm(undefined, deviceImage, {
          machine: { guestLink: { role: "connect", port: link, mac: DEVICE.mac } },
        });
        await started.waitForSsh({ timeoutMs: BOOT_TIMEOUT_MS });
        return started;
      });
      await timed("device boot", () => device.waitForSsh({ timeoutMs: BOOT_TIMEOUT_MS }));
      await linkUp(server, SERVER.mac, SERVER.address);
    });

    after(async () => {
      await device?.kill();
      await server?.kill();
      await world?.origin.close();
      if (work && !process.env.EOS_VM_KEEP) await rm(work, { recursive: true, force: true });
      if (world) await rm(world.dir, { recursive: true, force: true });
      process.stdout.write(`# update server image: ${timings.join(", ")}\n`);
    });

    it("keeps its state on the encrypted registry partition and serves HTTPS from the first boot", async () => {
      // Units may still be starting when SSH answers.
      await server
        .sshOk(["systemctl", "is-system-running", "--wait"], { timeoutMs: 300_000 })
        .catch(() => "");
      for (const unit of ["registry-rw", "eos-server-storage", "os-update-server"])
        assert.equal(
          (await server.ssh(["systemctl", "is-active", `${unit}.service`])).stdout.trim(),
          "active",
          unit,
        );
      // One-shots that ran and ended: the certificate (first boot only), and os-fetch with no images yet.
      for (const unit of ["eos-server-tls", "os-fetch"]) {
        const shown = await server.sshOk([
          "systemctl",
          "show",
          "-p",
          "Result,ExecMainStatus",
          `${unit}.service`,
        ]);
        assert.match(shown, /^Result=success$/m, `${unit}: ${shown}`);
        assert.match(shown, /^ExecMainStatus=0$/m, `${unit}: ${shown}`);
      }
      assert.equal(
        (await server.sshOk(["systemctl", "--failed", "--no-legend", "--plain"])).trim(),
        "",
        "no unit failed",
      );
      const registry = await server.sshOk([
        "findmnt",
        "-n",
        "-o",
        "SOURCE,FSTYPE",
        "/var/lib/containers/storage",
      ]);
      assert.match(registry, /^\/dev\/mapper\/\S+\s+xfs$/m, "the registry (LUKS2 + XFS) is mounted");
      const images = await server.sshOk(["findmnt", "-n", "-o", "SOURCE", "/srv/www/fleet/os-images"]);
      assert.match(
        images,
        /mapper\/.*\[\/eos-update-server\/os-images\]/,
        "a bind mount from the registry's XFS",
      );
      const state = await server.sshOk(["findmnt", "-n", "-o", "SOURCE", STATE]);
      assert.match(state, /mapper\/.*\[\/eos-update-server\/state\]/);
      assert.equal(
        (await server.sshOk(["readlink", "/etc/os-update-server.yml"])).trim(),
        `${STATE}/os-update-server.yml`,
      );
      assert.equal((await server.sshOk(["stat", "-c", "%a", `${STATE}/tls/key.pem`])).trim(), "600");
      // The image has no curl: its own Node, trusting the first boot's certificate and nothing else added.
      const health = await server.ssh([
        ...["env", `NODE_EXTRA_CA_CERTS=${STATE}/tls/cert.pem`, "node", "-e"],
        'fetch("https://localhost/health").then((r) => process.exit(r.ok ? 0 : 1), (e) => { console.error(e); process.exit(2); })',
      ]);
      assert.equal(health.code, 0, health.stderr);
    });

    it("fetches v2 from the origin as the README says: the images in /etc/os-update-server.yml, then os-fetch", async () => {
      const config = await server.sshOk(["cat", "/etc/os-update-server.yml"]);
      const origin = world.origin.url.replace("127.0.0.1", "10.0.2.2");
      await server.sshOk(["tee", `${STATE}/os-update-server.yml`], {
        input: config.replace(
          "update: []",
          `update:\n  - image: ${origin}/${NAME}.raw.xz\n    name: ${NAME}`,
        ),
      });
      await timed("fetch", () =>
        server.sshOk(["systemctl", "start", "os-fetch.service"], { timeoutMs: 900_000 }),
      );
      const listing = await server.sshOk(["ls", "/srv/www/fleet/os-images"]);
      assert.match(listing, new RegExp(`${NAME}`));
      assert.equal(
        (await server.ssh(["systemctl", "is-active", `os-update-daemon@${NAME}.timer`])).stdout.trim(),
        "active",
      );
    });

    it("the device guest on v1 updates to v2 from the server guest over HTTPS, kexecs and commits", async () => {
      const cert = await server.sshOk(["cat", `${STATE}/tls/cert.pem`]);
      const token = (
        await server.sshOk([
          "os-update-server",
          "token",
          "add",
          "device-1",
          "--tokens-dir",
          `${STATE}/tokens`,
        ])
      ).trim();
      const files = {
        "/etc/os-update.yml": `update:\n  name: ${NAME}\n  url: https://${SERVER.name}\n  ca: /run/eos/server-ca.pem\n`,
        "/run/eos/server-ca.pem": cert,
        "/run/eos/fleet-token": token,
      };
      await prepareDevice(files);
      // User networking would carry 192.168.76.1 to the host's network (something there answered
      // TLS when the device's address was off the link): the route and the neighbour's MAC say link.
      const route = await device.sshOk(["ip", "-o", "route", "get", SERVER.address]);
      assert.match(route, new RegExp(`^${SERVER.address} dev \\S+ src ${DEVICE.address} `), route);
      assert.equal((await device.ssh(["ping", "-c1", "-W5", SERVER.address])).code, 0, "the link carries");
      const neighbour = await device.sshOk(["ip", "neigh", "show", SERVER.address]);
      assert.match(neighbour, new RegExp(`lladdr ${SERVER.mac} `), "the server guest's NIC answered");
      const check = await timed("check over https", () =>
        device.ssh(["os-update", "--check"], { timeoutMs: 300_000 }),
      );
      assert.equal(check.code, 1, `--check offers v2: ${check.stdout}${check.stderr}`);
      assertOnV2(await timed("apply over https + kexec + commit", () => applyAndCommit(files)));
    });

    it("the device guest updates over SSH as the fleet user, whose key runs only the forced command", async () => {
      if ((await slot()) === "B") {
        const mark = device.mark();
        await timed("rollback + reboot", async () => {
          await device.ssh(["os-update", "--rollback", "--reboot"], { timeoutMs: 5 * 60_000 });
          await device.waitForConsole(LOGIN_PROMPT, { timeoutMs: BOOT_TIMEOUT_MS, since: mark });
          await device.waitForSsh({ timeoutMs: BOOT_TIMEOUT_MS });
        });
      }
      assert.equal(await slot(), "A", "v1 again, from slot A");
      const fleetKey = join(work, "id_fleet");
      assert.equal(spawnSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", fleetKey]).status, 0);
      await server.sshOk(["tee", "-a", `${STATE}/fleet_authorized_keys`], {
        input: await readFile(`${fleetKey}.pub`),
      });
      const hostKey = (await server.sshOk(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"])).split(" ");
      const files = {
        "/etc/os-update.yml":
          `update:\n  name: ${NAME}\n  server: fleet@${SERVER.name}\n` +
          `  pkey: /run/id_fleet\n  known_hosts: /run/eos/known_hosts\n`,
        "/run/id_fleet": await readFile(fleetKey, "utf8"),
        "/run/eos/known_hosts": `${SERVER.name} ${hostKey[0]} ${hostKey[1]}\n`,
      };
      await prepareDevice(files);
      const shadow = await device.ssh([
        ...["ssh", "-i", "/run/id_fleet", "-o", "UserKnownHostsFile=/run/eos/known_hosts"],
        ...["-o", "BatchMode=yes", `fleet@${SERVER.name}`, "cat /etc/shadow"],
      ]);
      assert.notEqual(shadow.code, 0, "a fleet key reads nothing but published images");
      assert.doesNotMatch(shadow.stdout, /root:/);
      // The server answered, over the link, with the pinned host key: its forced command refused.
      assert.match(shadow.stderr, /os-update-server restricted: refused/, shadow.stderr);
      const check = await timed("check over ssh", () =>
        device.ssh(["os-update", "--check"], { timeoutMs: 300_000 }),
      );
      assert.equal(check.code, 1, `--check offers v2: ${check.stdout}${check.stderr}`);
      assertOnV2(await timed("apply over ssh + kexec + commit", () => applyAndCommit(files)));
    });
  },
);
