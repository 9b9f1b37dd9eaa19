import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  baseCmdline,
  packageList,
  parseImageDescription,
  parseSize,
  REQUIRED_PACKAGES,
  SUITE_EPOCH,
} from "../../src/core/image/description.ts";
import { planLayout } from "../../src/core/image/layout.ts";
import { rootFiles } from "../../src/core/image/root-files.ts";
import { EosError } from "../../src/core/errors.ts";
import { readGpt } from "../../src/core/gpt.ts";
import { encodeGpt } from "../../src/core/gpt-write.ts";
import { memDisk } from "../helpers/memdisk.ts";

const MiB = 1024 * 1024;
const minimal = "name: EOS\nversion: '1.0'\n";

function configError(text: string): string {
  try {
    parseImageDescription(text, "img.yaml");
  } catch (error) {
    assert.ok(error instanceof EosError);
    assert.equal(error.code, "CONFIG");
    return error.message;
  }
  assert.fail("expected a CONFIG error");
}

test("the repository's default description is valid", () => {
  const desc = parseImageDescription(readFileSync("images/default.yaml", "utf8"), "images/default.yaml");
  assert.equal(desc.name, "EOS");
  assert.equal(desc.root.filesystem, "squashfs");
  assert.ok(packageList(desc).includes("podman"));
  for (const p of REQUIRED_PACKAGES) assert.ok(packageList(desc).includes(p), p);
  assert.ok(desc.partitions.root <= 300 * MiB, "root slot within the 300 MB target");
});

test("a minimal description gets the documented defaults", () => {
  const d = parseImageDescription(minimal, "img.yaml");
  assert.equal(d.distribution.suite, "bookworm");
  assert.equal(d.root.compression, "xz");
  assert.equal(d.partitions.root, 300 * MiB);
  assert.equal(d.partitions.esp, 64 * MiB);
  assert.deepEqual(d.kernel.cmdline, ["console=ttyS0"]);
  assert.equal(d.eos.node, "host");
  assert.equal(d.users.root.autologin_serial, false);
  assert.equal(baseCmdline(d), "console=ttyS0 rootfstype=squashfs");
});

test("distribution.suite: bookworm (the default) or trixie; another suite is refused by name", () => {
  const trixie = parseImageDescription(`${minimal}distribution: {suite: trixie}\n`, "img.yaml");
  assert.equal(trixie.distribution.suite, "trixie");
  assert.equal(trixie.distribution.mirror, "http://deb.debian.org/debian");
  assert.match(configError(`${minimal}distribution: {suite: sid}\n`), /^img\.yaml: distribution\.suite: /);
});

test("errors name the file and the key at fault", () => {
  assert.match(configError("version: '1'\n"), /^img\.yaml: name: /);
  assert.match(configError(`${minimal}name2: x\n`), /img\.yaml: unknown key name2/);
  assert.match(
    configError(`${minimal}packages: ["podman; rm -rf /"]\n`),
    /img\.yaml: packages\[0\]: must be a Debian package name/,
  );
  assert.match(
    configError(`${minimal}services: {enable: ["../../etc/passwd"]}\n`),
    /services\.enable\[0\]: must be a systemd unit name/,
  );
  assert.match(
    configError(`${minimal}partitions: {root: 10M}\n`),
    /partitions\.root: must be at least 64 MiB/,
  );
  assert.match(
    configError(`${minimal}partitions: {root: lots}\n`),
    /partitions\.root: cannot read "lots" as a size/,
  );
  assert.match(
    configError(`${minimal}files: ["../secrets"]\n`),
    /files\[0\]: must be a path without \.\. components/,
  );
  assert.match(
    configError(`${minimal}kernel: {cmdline: ["quiet splash"]}\n`),
    /kernel\.cmdline\[0\]: must be one kernel parameter/,
  );
  assert.match(
    configError(`${minimal}users: {root: {ssh_authorized_keys: ["hello"]}}\n`),
    /users\.root\.ssh_authorized_keys\[0\]/,
  );
  assert.match(configError(`${minimal}update: {url: "ftp://x"}\n`), /update\.url: must be an http/);
  assert.match(configError("name: ../x\nversion: '1'\n"), /name: must be letters/);
  assert.match(configError("name: EOS\nversion: 'a b'\n"), /version: must be letters/);
});

test("zstd and erofs are refused with the reason: GRUB 2.06 loads the kernel from the slot", () => {
  assert.match(
    configError(`${minimal}root: {compression: zstd}\n`),
    /root\.compression: zstd cannot be read by bookworm's GRUB 2\.06/,
  );
  assert.match(
    configError(`${minimal}root: {filesystem: erofs}\n`),
    /root\.filesystem: erofs cannot be read/,
  );
  assert.equal(parseImageDescription(`${minimal}root: {compression: gzip}\n`, "i").root.compression, "gzip");
});

test("sizes read binary units", () => {
  assert.equal(parseSize("64M"), 64 * MiB);
  assert.equal(parseSize("300MiB"), 300 * MiB);
  assert.equal(parseSize("1G"), 1024 * MiB);
  assert.equal(parseSize(4096), 4096);
  assert.throws(() => parseSize("1T"));
});

test("the AB layout: p.UEFI, p.lxreadonly, p.lxrootclone1 of the same size, p.spare last", async () => {
  const d = parseImageDescription(minimal, "img.yaml");
  const layout = planLayout(d, "AB");
  assert.deepEqual(
    layout.table.partitions.map((p) => [p.number, p.name]),
    [
      [1, "p.UEFI"],
      [2, "p.lxreadonly"],
      [3, "p.lxrootclone1"],
      [4, "p.spare"],
    ],
  );
  assert.equal(layout.slotA.grubName, "gpt2");
  assert.equal(layout.slotB?.grubName, "gpt3");
  assert.equal(layout.slotA.size, layout.slotB?.size);
  for (const p of [layout.esp, layout.slotA, layout.spare])
    assert.equal(p.offset % MiB, 0, `${p.label} aligned`);
  assert.equal(layout.diskSize, (1 + 64 + 300 + 300 + 64 + 1) * MiB);
  // The table round-trips through the GPT codec and is the same for the same name.
  const disk = memDisk(layout.diskSize);
  disk.apply(encodeGpt(layout.table, layout.diskSize));
  const { table } = await readGpt(disk);
  const spare = table.partitions.find((p) => p.name === "p.spare");
  assert.equal(spare?.lastLba, (layout.spare.offset + layout.spare.size) / 512 - 1);
  assert.ok(
    table.partitions.every((p) => p.lastLba <= (spare?.lastLba ?? 0)),
    "p.spare is last",
  );
  assert.deepEqual(planLayout(d, "AB"), layout);
  assert.notEqual(planLayout({ ...d, name: "Other" }, "AB").slotA.uuid, layout.slotA.uuid);
});

test("the Static layout has no slot B", () => {
  const layout = planLayout(parseImageDescription(minimal, "img.yaml"), "Static");
  assert.equal(layout.slotB, undefined);
  assert.deepEqual(
    layout.table.partitions.map((p) => p.name),
    ["p.UEFI", "p.lxreadonly", "p.spare"],
  );
});

test("root files: os-release VERSION, os-update.yml, update_commit.service, wrappers, SSH", () => {
  const d = parseImageDescription(
    `${minimal}update: {url: "http://10.0.2.2:8080", token: abc}\nusers: {root: {ssh_authorized_keys: ["ssh-ed25519 AAAA k"]}}\n`,
    "img.yaml",
  );
  const files = new Map(
    rootFiles(d, {
      keyNames: ["release.pub"],
      commands: ["os-update", "fleet"],
      nodePath: "/usr/lib/eos/node",
      architecture: "x86_64",
      updateCommitUnit: readFileSync(new URL("../../systemd/update_commit.service", import.meta.url), "utf8"),
    }).map((f) => [f.path, f]),
  );
  assert.match(files.get("/usr/lib/os-release")?.content ?? "", /^VERSION="1\.0"$/m);
  assert.equal(files.get("/etc/eos/image")?.content, "NAME=EOS\nVERSION=1.0\nARCH=x86_64\n");
  const conf = files.get("/etc/os-update.yml");
  assert.equal(
    conf?.content,
    '# EOS device update configuration (written by eos build)\nupdate:\n  name: "EOS"\n  url: "http://10.0.2.2:8080"\n  token: "abc"\n  keys:\n    - "/usr/share/eos/keys/release.pub"\n',
  );
  assert.equal(conf?.mode, 0o600, "a token makes the file private");
  const unit = files.get("/usr/lib/systemd/system/update_commit.service")?.content ?? "";
  assert.match(unit, /^ExecStart=\/usr\/bin\/os-update --commit$/m);
  assert.match(unit, /^After=multi-user\.target$/m);
  assert.doesNotMatch(unit, /^Condition/m, "it runs on every boot: a normal boot is confirmed");
  // The root slot opens under dm-verity in the initramfs (root.verity is on by default).
  assert.match(files.get("/etc/initramfs-tools/modules")?.content ?? "", /^dm_verity$/m);
  assert.equal(files.get("/etc/initramfs-tools/scripts/local-premount/eos-verity")?.mode, 0o755);
  assert.match(
    files.get("/etc/initramfs-tools/hooks/eos-verity")?.content ?? "",
    /copy_exec \/usr\/sbin\/veritysetup/,
  );
  // A link, so that a flake's link to a pilot keeps the flake's name as argv[1].
  assert.equal(files.get("/usr/bin/os-update")?.link, "../lib/eos/os-update.mjs");
  assert.equal(files.get("/root/.ssh/authorized_keys")?.content, "ssh-ed25519 AAAA k\n");
  assert.match(files.get("/etc/initramfs-tools/modules")?.content ?? "", /^squashfs$/m);
  assert.match(
    files.get("/etc/initramfs-tools/scripts/init-bottom/eos-overlay")?.content ?? "",
    /lowerdir=\/eos\.lower/,
  );
  assert.equal(files.has("/etc/systemd/system/serial-getty@ttyS0.service.d/eos-autologin.conf"), false);
});

test("root files: sshd's host key is made at first boot wherever the root has openssh-server, keys or not", () => {
  const hostKeyUnit = "/etc/systemd/system/ssh.service.d/eos-host-keys.conf";
  const files = (yaml: string) =>
    new Map(
      rootFiles(parseImageDescription(yaml, "img.yaml"), {
        keyNames: [],
        commands: [],
        nodePath: undefined,
        architecture: "x86_64",
        updateCommitUnit: "[Service]\n",
      }).map((f) => [f.path, f]),
    );
  const sshd = files(`${minimal}packages: [openssh-server]\n`);
  assert.match(sshd.get(hostKeyUnit)?.content ?? "", /ssh-keygen -q -t ed25519/);
  assert.equal(sshd.has("/root/.ssh/authorized_keys"), false);
  assert.ok(files(`${minimal}packages: ["openssh-server=1:9.2p1-2+deb12u3"]\n`).has(hostKeyUnit));
  assert.equal(files(`${minimal}packages: [less]\n`).has(hostKeyUnit), false, "no sshd, no unit for it");
});

test("root files: the update server's units, not enabled, only in a root that carries os-update-server", () => {
  const d = parseImageDescription(minimal, "img.yaml");
  const serverUnits = new Map([
    ["os-update-server.service", "[Service]\nExecStart=/usr/bin/os-update-server serve\n"],
  ]);
  const files = (commands: string[]) =>
    new Map(
      rootFiles(d, {
        keyNames: [],
        commands,
        nodePath: "/usr/lib/eos/node",
        architecture: "x86_64",
        updateCommitUnit: "[Service]\n",
        serverUnits,
      }).map((f) => [f.path, f]),
    );
  const server = files(["os-update", "os-update-server"]);
  assert.equal(
    server.get("/usr/lib/systemd/system/os-update-server.service")?.content,
    serverUnits.get("os-update-server.service"),
  );
  assert.equal(server.get("/usr/lib/systemd/system/os-update-server.service")?.mode, 0o644);
  assert.equal(files(["os-update"]).has("/usr/lib/systemd/system/os-update-server.service"), false);
});

test("epoch: seconds or a date; absent, the build takes the suite's date, never the clock", () => {
  assert.equal(parseImageDescription(`${minimal}epoch: 1700000000\n`, "img.yaml").epoch, 1700000000);
  assert.equal(parseImageDescription(`${minimal}epoch: 2026-11-01\n`, "img.yaml").epoch, 1793491200);
  assert.equal(
    parseImageDescription(`${minimal}epoch: "2026-11-01T12:00:00Z"\n`, "img.yaml").epoch,
    1793491200 + 12 * 3600,
  );
  assert.equal(parseImageDescription(minimal, "img.yaml").epoch, undefined);
  assert.equal(SUITE_EPOCH.bookworm, 1686355200);
  assert.equal(SUITE_EPOCH.trixie, 1754697600);
  assert.match(configError(`${minimal}epoch: yesterday\n`), /epoch.*seconds since 1970 or a date/);
  assert.match(configError(`${minimal}epoch: -5\n`), /epoch/);
});

test("every root carries the programs os-update runs on the device, whatever the description lists", () => {
  // kexec (--apply), xdelta3 (pair deltas), mcopy (--firmware), veritysetup (the initramfs, GRUB's verity).
  for (const file of ["images/default.yaml", "images/aarch64.yaml", "images/update-server.yaml"]) {
    const desc = parseImageDescription(readFileSync(file, "utf8"), file);
    const packages = packageList({ ...desc, packages: [] });
    for (const p of ["kexec-tools", "xdelta3", "mtools", "cryptsetup-bin"])
      assert.ok(packages.includes(p), `${file}: ${p}`);
  }
});
