/**
 * The EC2 profile's image boots as an EC2 instance would see it, as far as
 * QEMU can play one: the root on an NVMe disk under UEFI, and an IMDSv2
 * responder at 169.254.169.254:80 (QEMU user networking on 169.254.0.0/16
 * with a guestfwd to a test server on the host). The image carries no SSH
 * key of its own: logging in with the key the responder served shows that
 * eos-ec2-init put it in place before sshd; the host name is the served one.
 * One boot for every assertion. Publishing to AWS itself cannot be tested here.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { parseArchitecture } from "../../src/core/image/arch.ts";
import { ROOT_CLONE_LABEL, ROOT_LABEL } from "../../src/core/manifest.ts";
import type { Vm } from "../../src/io/machine/qemu.ts";
import { startImds, type ImdsServer } from "../helpers/imds.ts";
import { BOOT_TIMEOUT_MS, startTestVm } from "../helpers/vm.ts";
import { REPO, testImage, VM_TMP, vmSkipReason, type TestImage } from "../helpers/vm-image.ts";

// One more image build and boot (about 8 minutes here) than the CI budget holds: a documented run.
// EOS_VM_EC2_ARCH=aarch64 builds images/aarch64.yaml for Graviton and boots it emulated (TCG).
const ARCH = parseArchitecture(process.env.EOS_VM_EC2_ARCH ?? "x86_64", "EOS_VM_EC2_ARCH");
const skip =
  vmSkipReason(ARCH) ??
  (process.env.EOS_VM_EC2 === "1"
    ? undefined
    : "the EC2 image is one more build and boot than CI's budget: EOS_VM_EC2=1 node --import tsx --test test/vm/ec2.test.ts runs it");
/** Debian's kernel of each architecture's EC2 image (src/core/image/arch.ts): its release ends so. */
const KERNEL_FLAVOUR = { x86_64: "-cloud-amd64", aarch64: "-arm64" }[ARCH];
/** TCG runs an arm64 guest about three times slower than KVM an x86_64 one: every wait scales. */
const SLOW = ARCH === "aarch64" ? 3 : 1;
if (skip) process.stdout.write(`# vm tier (EC2) skipped: ${skip}\n`);

const FQDN = "ip-169-254-2-15.eu-test-1.compute.internal";

/** The instance's key pair: not baked into the image, served only by the responder. */
function instanceKey(): string {
  const key = join(VM_TMP, "keys", "ec2_instance_ed25519");
  if (!existsSync(key)) {
    const r = spawnSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "eos-ec2-instance", "-f", key]);
    if (r.status !== 0) throw new Error(`ssh-keygen: ${r.stderr.toString()}`);
  }
  return key;
}

describe(`the EC2 image (${ARCH}) on NVMe with an IMDSv2 responder`, { skip, timeout: 60 * 60_000 }, () => {
  let image: TestImage;
  let imds: ImdsServer;
  let vm: Vm;
  let key: string;

  before(async () => {
    const t0 = performance.now();
    image = await testImage({
      ...(ARCH === "aarch64" ? { description: "images/aarch64.yaml" } : {}),
      architecture: ARCH,
      name: "EOS-EC2",
      version: "1.0.0-ec2",
      profile: "EC2",
      edit: (d) => {
        d.users = { root: { ssh_authorized_keys: [], autologin_serial: false } };
      },
    });
    process.stdout.write(
      `# image ${image.raw} (${image.cached ? "cached" : `built in ${((performance.now() - t0) / 1000).toFixed(0)} s`})\n`,
    );
    key = instanceKey();
    const pub = (await readFile(`${key}.pub`, "utf8")).trim();
    imds = await startImds({ keys: [{ name: "eos-ec2-test", key: pub }], hostname: FQDN });
    const t1 = performance.now();
    vm = await startTestVm(undefined, image, {
      sshKey: key,
      architecture: ARCH,
      machine: {
        diskBus: "nvme",
        guestNet: "169.254.0.0/16",
        guestForwards: [
          {
            address: "169.254.169.254",
            port: 80,
            command: [process.execPath, join(REPO, "test/helpers/imds-proxy.mjs"), String(imds.port)],
          },
        ],
      },
    });
    await vm.waitForSsh({ timeoutMs: SLOW * BOOT_TIMEOUT_MS });
    const state = (
      await vm.ssh(["systemctl", "is-system-running", "--wait"], { timeoutMs: SLOW * 180_000 })
    ).stdout.trim();
    process.stdout.write(
      `# ${vm.accel}: SSH with the IMDS key after ${((performance.now() - t1) / 1000).toFixed(1)} s (system ${state})\n`,
    );
  });

  after(async () => {
    if (process.env.EOS_VM_KEEP && vm) process.stdout.write(`# console log ${vm.consoleLog}\n`);
    await vm?.kill();
    await imds?.close();
  });

  it("let root log in with the key IMDS served (the image has none) after a token flow", async () => {
    assert.deepEqual(image.build.profile, "EC2");
    const text = await vm.sshOk(["cat", "/root/.ssh/authorized_keys"]);
    assert.ok(text.includes((await readFile(`${key}.pub`, "utf8")).trim()), text);
    const st = (await vm.sshOk(["stat", "-c", "%a %U", "/root/.ssh/authorized_keys"])).trim();
    assert.equal(st, "600 root");
    // The guest asked for a token first and sent it with every GET.
    assert.equal(imds.requests[0]?.method, "PUT");
    assert.ok(imds.requests.filter((r) => r.method === "GET").every((r) => r.token && r.status === 200));
    const log = await vm.sshOk(["journalctl", "-b", "-u", "eos-ec2-init.service", "--no-pager"]);
    assert.match(log, /1 SSH key\(s\) from IMDS \(eos-ec2-test\) for root/);
  });

  it("has the host name IMDS served, set before sshd started", async () => {
    assert.equal((await vm.sshOk(["hostname"])).trim(), "ip-169-254-2-15");
    assert.equal((await vm.sshOk(["cat", "/etc/hostname"])).trim(), "ip-169-254-2-15");
    assert.equal((await vm.sshOk(["hostname", "-f"])).trim(), FQDN);
    const after = await vm.sshOk(["systemctl", "show", "-P", "After", "ssh.service"]);
    assert.match(after, /eos-ec2-init\.service/);
  });

  it("runs from NVMe with slots A and B, the serial console at 115200 and the ENA driver at hand", async () => {
    const slotA = (await vm.sshOk(["readlink", "-f", `/dev/disk/by-partlabel/${ROOT_LABEL}`])).trim();
    assert.match(slotA, /^\/dev\/nvme0n1p\d$/);
    assert.match(
      await vm.sshOk(["veritysetup", "status", "eos-root"]),
      new RegExp(`data device:\\s+${slotA}$`, "m"),
    );
    assert.match(
      (await vm.sshOk(["readlink", "-f", `/dev/disk/by-partlabel/${ROOT_CLONE_LABEL}`])).trim(),
      /^\/dev\/nvme0n1p\d$/,
    );
    const cmdline = (await vm.sshOk(["cat", "/proc/cmdline"])).trim().split(/\s+/);
    assert.equal(cmdline.filter((w) => w.startsWith("console=")).at(-1), "console=ttyS0,115200");
    assert.ok((await vm.sshOk(["uname", "-r"])).trim().endsWith(KERNEL_FLAVOUR));
    assert.equal((await vm.sshOk(["uname", "-m"])).trim(), ARCH);
    await vm.sshOk(["modinfo", "-n", "ena"]);
    const failed = await vm.sshOk(["systemctl", "--failed", "--no-legend", "--plain"]);
    assert.equal(failed.trim(), "", `failed units:\n${failed}`);
  });

  it("gives up gracefully where no metadata service answers (the same image in KVM)", async () => {
    const r = await vm.ssh([
      "eos-ec2-init",
      "--url",
      "http://169.254.2.2:9",
      "--wait",
      "3",
      "--timeout",
      "1",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /no instance metadata service answered .* not on EC2/);
    assert.equal((await vm.sshOk(["hostname"])).trim(), "ip-169-254-2-15");
  });

  it("powers off cleanly", async () => {
    assert.equal(await vm.powerOff({ timeoutMs: SLOW * 120_000 }), 0);
  });
});
