import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import {
  findPasswdEntry,
  hostsWithName,
  mergeAuthorizedKeys,
  parseImdsUrl,
  parseInstanceHostname,
  parsePublicKeyList,
  validateOpenSshKey,
} from "../../src/core/cloud/imds.ts";
import { EosError } from "../../src/core/errors.ts";
import { EC2_CONSOLE, EC2_INIT_UNIT, ec2RootFiles, profileDescription } from "../../src/core/image/ec2.ts";
import { packageList, parseImageDescription } from "../../src/core/image/description.ts";
import { planLayout } from "../../src/core/image/layout.ts";
import { PartitionType } from "../../src/core/gpt.ts";
import { machineArgv } from "../../src/core/machine/qemu-machine.ts";
import { MINIMAL_PLAN } from "../helpers/machine-plan.ts";

function key(type = "ssh-ed25519", bytes = 32, comment = " me@host"): string {
  const t = Buffer.from(type);
  const len = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n);
    return b;
  };
  return `${type} ${Buffer.concat([len(t.length), t, len(bytes), randomBytes(bytes)]).toString("base64")}${comment}`;
}

function refused(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof EosError && pattern.test(e.message));
}

test("the public key list: N=name lines, sorted; anything else is refused", () => {
  assert.deepEqual(parsePublicKeyList("1=ci\r\n0=my key\n"), [
    { index: 0, name: "my key" },
    { index: 1, name: "ci" },
  ]);
  assert.deepEqual(parsePublicKeyList(""), []);
  refused(() => parsePublicKeyList("0=a\n0=b"), /index 0 listed twice/);
  for (const bad of ["x=a", "0", "../0=a", "0=a\u0000b", "1234=a", "-1=a"])
    refused(() => parsePublicKeyList(bad), /line 1 .*not N=name/);
});

test("an OpenSSH key line passes as it is; options, several lines and mislabelled blobs do not", () => {
  const good = key();
  assert.equal(validateOpenSshKey(`${good}\n`, "k"), good);
  assert.equal(validateOpenSshKey(key("ssh-rsa", 256, ""), "k").startsWith("ssh-rsa "), true);
  refused(() => validateOpenSshKey(`command="/bin/sh" ${good}`, "k"), /k: not an OpenSSH public key line/);
  refused(() => validateOpenSshKey(`${good}\n${key()}`, "k"), /expected one OpenSSH public key line, got 2/);
  refused(() => validateOpenSshKey("", "k"), /got 0/);
  refused(() => validateOpenSshKey("ssh-ed25519 AAAA!!", "k"), /not an OpenSSH public key line/);
  refused(() => validateOpenSshKey("ssh-dss AAAAB3NzaC1kc3M=", "k"), /not an OpenSSH public key line/);
  // The blob says rsa, the line says ed25519; a blob cut short.
  refused(() => validateOpenSshKey(`ssh-ed25519 ${key("ssh-rsa", 64).split(" ")[1]}`, "k"), /does not hold/);
  refused(
    () => validateOpenSshKey(`ssh-ed25519 ${Buffer.from("\0\0\0\x0bssh-ed25519").toString("base64")}`, "k"),
    /does not hold/,
  );
  refused(() => validateOpenSshKey(`${good} \u0007bell`, "k"), /not an OpenSSH/);
});

test("a host name from IMDS: lowercased, its first label the system's name; shell and option bait refused", () => {
  assert.deepEqual(parseInstanceHostname("IP-10-0-1-5.eu-west-1.compute.internal\n"), {
    fqdn: "ip-10-0-1-5.eu-west-1.compute.internal",
    short: "ip-10-0-1-5",
  });
  assert.deepEqual(parseInstanceHostname("i-0abc"), { fqdn: "i-0abc", short: "i-0abc" });
  for (const bad of [
    "",
    "-rf",
    "a b",
    "a..b",
    "host.",
    "$(reboot)",
    "a\nb",
    "host_name",
    "x".repeat(64),
    Array.from({ length: 5 }, () => "a".repeat(60)).join("."),
  ])
    refused(() => parseInstanceHostname(bad), /not a host name/);
});

test("authorized_keys: the image's lines stay, the instance's block is replaced, never piled up", () => {
  const image = `${key()}\n# a comment\n`;
  const k1 = key();
  const k2 = key();
  const once = mergeAuthorizedKeys(image, [k1]);
  assert.ok(once.startsWith(image));
  assert.ok(once.includes(`\n${k1}\n`));
  const twice = mergeAuthorizedKeys(once, [k2]);
  assert.ok(!twice.includes(k1) && twice.includes(k2) && twice.startsWith(image));
  assert.equal(mergeAuthorizedKeys(twice, [k2]), twice);
  assert.equal(mergeAuthorizedKeys(twice, []), image);
  assert.equal(mergeAuthorizedKeys("", []), "");
});

test("/etc/hosts gets the instance's names on 127.0.1.1 after localhost, the image's line goes", () => {
  const hosts = "127.0.0.1\tlocalhost\n127.0.1.1\teos\n::1\tlocalhost\n";
  const name = parseInstanceHostname("ip-1.example.internal");
  assert.equal(
    hostsWithName(hosts, name),
    "127.0.0.1\tlocalhost\n127.0.1.1\tip-1.example.internal ip-1\n::1\tlocalhost\n",
  );
  assert.equal(hostsWithName("", parseInstanceHostname("i-1")), "127.0.1.1\ti-1\n");
});

test("the login user comes from /etc/passwd; a home with .. is not one", () => {
  const passwd =
    "root:x:0:0:root:/root:/bin/bash\nadmin:x:1000:1001::/home/admin:/bin/sh\nbad:x:5:5::/home/../etc:/bin/sh\n";
  assert.deepEqual(findPasswdEntry(passwd, "admin"), {
    name: "admin",
    uid: 1000,
    gid: 1001,
    home: "/home/admin",
  });
  assert.equal(findPasswdEntry(passwd, "bad"), undefined);
  assert.equal(findPasswdEntry(passwd, "nobody"), undefined);
});

test("the IMDS URL is http://HOST[:PORT] only", () => {
  assert.equal(parseImdsUrl("http://127.0.0.1:8080/", "--url"), "http://127.0.0.1:8080");
  for (const bad of ["https://169.254.169.254", "http://h/latest", "file:///etc", "http://a b"])
    assert.throws(() => parseImdsUrl(bad, "--url"), /--url .*must be http:\/\/HOST/);
});

const desc = parseImageDescription(
  [
    "name: EOS",
    "version: '1'",
    "kernel: {cmdline: [console=ttyS0, quiet]}",
    "services: {enable: [podman-restart.service], mask: [ssh.service]}",
    "users: {root: {autologin_serial: true}}",
  ].join("\n"),
  "img.yaml",
);

test("the EC2 profile: AB's disk, the serial console at 115200 last, sshd, DHCP and eos-ec2-init enabled", () => {
  const { desc: ec2, notes } = profileDescription(desc, "EC2", "img.yaml");
  assert.deepEqual(ec2.kernel.cmdline, ["quiet", EC2_CONSOLE]);
  assert.ok(ec2.kernel.modules.includes("nvme"));
  assert.deepEqual(ec2.services.enable, [
    "podman-restart.service",
    "systemd-networkd.service",
    "ssh.service",
    EC2_INIT_UNIT,
  ]);
  assert.deepEqual(ec2.services.mask, []);
  assert.equal(ec2.users.root.autologin_serial, false);
  assert.ok(packageList(ec2).includes("openssh-server"));
  assert.ok(packageList(ec2).includes("linux-image-cloud-amd64"));
  assert.equal(notes.length, 2);
  assert.match(notes.join("\n"), /services\.mask lists ssh\.service/);
  // Same layout as AB: two slots of the same size.
  const layout = planLayout(ec2, "EC2");
  assert.deepEqual(
    layout.table.partitions.map((p) => p.name),
    planLayout(desc, "AB").table.partitions.map((p) => p.name),
  );
  assert.equal(layout.slotB?.size, layout.slotA.size);
  // Other profiles build the description as written.
  assert.equal(profileDescription(desc, "AB", "img.yaml").desc, desc);
  assert.throws(
    () => profileDescription({ ...desc, eos: { commands: true, node: "none" } }, "EC2", "img.yaml"),
    /img\.yaml: the EC2 profile runs eos-ec2-init/,
  );
  const files = ec2RootFiles("[Unit]\n");
  assert.deepEqual(
    files.map((f) => f.path),
    [
      "/usr/lib/systemd/system/eos-ec2-init.service",
      "/etc/systemd/system/ssh.service.d/eos-host-keys.conf",
      "/etc/ssh/sshd_config.d/eos-host-keys.conf",
      "/usr/lib/systemd/network/80-eos-ec2.network",
    ],
  );
});

test("EC2 on arm64 (Graviton): Debian's arm64 kernel, ttyS0 last after QEMU virt's PL011, NVMe in the initramfs", () => {
  const arm = parseImageDescription(readFileSync("images/aarch64.yaml", "utf8"), "images/aarch64.yaml");
  const { desc: ec2 } = profileDescription(arm, "EC2", "images/aarch64.yaml");
  // Graviton's serial console is ttyS0 (/dev/console, last); ttyAMA0 stays for QEMU virt and other UEFI boards.
  assert.deepEqual(ec2.kernel.cmdline, ["console=ttyAMA0", EC2_CONSOLE]);
  // linux-image-arm64 carries nvme and ena as modules: no second emulated root for a cloud flavour.
  assert.ok(packageList(ec2, "aarch64").includes("linux-image-arm64"));
  assert.ok(!packageList(ec2, "aarch64").some((p) => p.includes("cloud")));
  assert.deepEqual(
    packageList(ec2, "aarch64"),
    packageList(arm, "aarch64"),
    "the AB build's root cache entry",
  );
  assert.ok(ec2.kernel.modules.includes("nvme"));
  assert.deepEqual(
    planLayout(ec2, "EC2", "aarch64").table.partitions.map((p) => p.typeGuid),
    [
      PartitionType.efiSystem,
      PartitionType.linuxRootArm64,
      PartitionType.linuxRootArm64,
      PartitionType.linuxData,
    ],
  );
});

test("an EC2-like QEMU machine: NVMe boot disk, a guest network and a guestfwd command of plain words", () => {
  const plan = MINIMAL_PLAN;
  const args = machineArgv({
    ...plan,
    diskBus: "nvme",
    guestNet: "169.254.0.0/16",
    guestForwards: [
      { address: "169.254.169.254", port: 80, command: ["/usr/bin/node", "/p/proxy.mjs", "4567"] },
    ],
  });
  assert.ok(args.includes("nvme,serial=eos,drive=disk0,bootindex=0"));
  assert.ok(!args.some((a) => a.startsWith("virtio-blk-pci,drive=disk0")));
  assert.ok(
    args.includes(
      "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,net=169.254.0.0/16,guestfwd=tcp:169.254.169.254:80-cmd:/usr/bin/node /p/proxy.mjs 4567",
    ),
    args.join(" "),
  );
  assert.ok(machineArgv(plan).includes("virtio-blk-pci,drive=disk0,bootindex=0"));
  for (const word of ["a,b", "$(x)", "a b", ""])
    assert.throws(
      () =>
        machineArgv({ ...plan, guestForwards: [{ address: "169.254.169.254", port: 80, command: [word] }] }),
      /not a plain word/,
    );
  assert.throws(() => machineArgv({ ...plan, guestNet: "10.0.0.0,restrict=on" }), /not ADDRESS\/PREFIX/);
});
