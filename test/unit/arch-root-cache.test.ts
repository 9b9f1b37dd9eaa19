import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { EosError } from "../../src/core/errors.ts";
import { PartitionType } from "../../src/core/gpt.ts";
import { architectureOfRootType, parseArchitecture } from "../../src/core/image/arch.ts";
import { machineArgv, LOGIN_OR_SHELL, LOGIN_PROMPT } from "../../src/core/machine/qemu-machine.ts";
import { packageList, parseImageDescription } from "../../src/core/image/description.ts";
import { planLayout } from "../../src/core/image/layout.ts";
import {
  BASE_ROOT_RECIPE,
  baseRootEntryName,
  baseRootInputs,
  baseRootKey,
} from "../../src/core/image/root-cache.ts";
import { rootFiles, serialConsole } from "../../src/core/image/root-files.ts";
import { mmdebstrapArgv } from "../../src/io/image/base-root.ts";

const desc = parseImageDescription(
  "name: EOS\nversion: '1.0'\npackages: [podman, less]\nkernel: {cmdline: [console=ttyAMA0]}\n",
  "img.yaml",
);
const ARCHIVE = { "dists/bookworm/InRelease": "a".repeat(64) };
const inputs = baseRootInputs(desc, "aarch64", ARCHIVE, 1686355200);

test("--arch takes x86_64 and aarch64 and names the argument otherwise", () => {
  assert.equal(parseArchitecture("x86_64"), "x86_64");
  assert.equal(parseArchitecture("aarch64"), "aarch64");
  for (const bad of ["arm64", "riscv64", ""]) {
    assert.throws(
      () => parseArchitecture(bad, "--arch"),
      (e: unknown) => e instanceof EosError && e.code === "USAGE" && e.message.startsWith(`--arch ${bad}:`),
    );
  }
  assert.throws(() => parseArchitecture("arm64"), /Debian's arm64 is aarch64/);
});

test("the base-root key is the sha256 of the canonical JSON of its inputs", () => {
  const key = baseRootKey(inputs);
  assert.match(key, /^[0-9a-f]{64}$/);
  assert.equal(inputs.recipe, BASE_ROOT_RECIPE);
  assert.deepEqual(inputs.packages, [...inputs.packages].sort(), "packages sorted");
  assert.ok(inputs.packages.includes("linux-image-arm64"));
  assert.ok(!inputs.packages.includes("linux-image-cloud-amd64"));
  // Stable: the same inputs in another key order (and a mirror with a trailing slash) give the same key.
  const reordered = baseRootInputs(
    {
      ...desc,
      packages: ["less", "podman"],
      distribution: { ...desc.distribution, mirror: `${desc.distribution.mirror}/` },
    },
    "aarch64",
    ARCHIVE,
    1686355200,
  );
  assert.equal(baseRootKey(reordered), key);
  assert.equal(baseRootKey(JSON.parse(JSON.stringify(inputs)) as typeof inputs), key);
  assert.match(baseRootEntryName(inputs, key), /^aarch64-bookworm-[0-9a-f]{24}$/);
});

test("every input changes the key", () => {
  const key = baseRootKey(inputs);
  const variants = [
    { ...inputs, recipe: "eos-base-root/999" },
    baseRootInputs(desc, "x86_64", ARCHIVE, 1686355200),
    { ...inputs, suite: "trixie" },
    { ...inputs, mirror: "http://example.org/debian" },
    { ...inputs, components: ["main", "non-free-firmware"] },
    baseRootInputs({ ...desc, packages: ["podman"] }, "aarch64", ARCHIVE, 1686355200),
    baseRootInputs(desc, "aarch64", { "dists/bookworm/InRelease": "b".repeat(64) }, 1686355200),
    baseRootInputs(desc, "aarch64", ARCHIVE, 1686355201),
  ];
  const keys = new Set(variants.map((v) => baseRootKey(v)));
  assert.equal(keys.size, variants.length);
  assert.ok(!keys.has(key));
});

test("aarch64 slots carry the Linux root (ARM64) type; x86_64 keeps its own", () => {
  const arm = planLayout(desc, "AB", "aarch64");
  const x86 = planLayout(desc, "AB");
  const types = (l: typeof arm) => l.table.partitions.map((p) => p.typeGuid);
  assert.deepEqual(types(arm), [
    PartitionType.efiSystem,
    PartitionType.linuxRootArm64,
    PartitionType.linuxRootArm64,
    PartitionType.linuxData,
  ]);
  assert.equal(types(x86)[1], PartitionType.linuxRootX86_64);
  assert.equal(types(x86)[2], PartitionType.linuxRootX86_64);
});

test("arm64 roots: MODULES=list with the virt/Pi modules, autologin on the console's tty", () => {
  const files = rootFiles(
    { ...desc, users: { root: { ssh_authorized_keys: [], autologin_serial: true } } },
    { keyNames: [], commands: [], nodePath: undefined, updateCommitUnit: "", architecture: "aarch64" },
  );
  const byPath = new Map(files.map((f) => [f.path, f.content]));
  assert.match(byPath.get("/etc/initramfs-tools/conf.d/eos-modules") ?? "", /^MODULES=list$/m);
  const modules = byPath.get("/etc/initramfs-tools/modules") ?? "";
  for (const m of ["squashfs", "overlay", "dm_verity", "virtio_blk", "virtio_pci", "sdhci_iproc"])
    assert.match(modules, new RegExp(`^${m}$`, "m"), m);
  assert.ok(byPath.has("/etc/systemd/system/serial-getty@ttyAMA0.service.d/eos-autologin.conf"));
  const x86 = rootFiles(
    { ...desc, kernel: { ...desc.kernel, cmdline: ["console=ttyS0"] } },
    { keyNames: [], commands: [], nodePath: undefined, updateCommitUnit: "", architecture: "x86_64" },
  );
  assert.ok(!x86.some((f) => f.path.includes("conf.d/eos-modules")), "x86_64 keeps Debian's MODULES");
  assert.equal(serialConsole(["console=tty0", "console=ttyS1,115200"]), "ttyS1");
  assert.equal(serialConsole(["quiet"]), "ttyS0");
  assert.equal(serialConsole(["console=tty0"]), "ttyS0");
});

test("mmdebstrap: x86_64 argv as before; aarch64 adds --architectures, the initramfs deferral and GRUB's .deb", () => {
  const x86 = mmdebstrapArgv(desc, "x86_64", "/t");
  assert.ok(!x86.some((a) => a.startsWith("--architectures") || a.includes("hook")));
  assert.ok(x86.includes(`--include=${packageList(desc).join(",")}`));
  const arm = mmdebstrapArgv(desc, "aarch64", "/t");
  assert.ok(arm.includes("--architectures=arm64"));
  const essential = arm.find((a) => a.startsWith("--essential-hook=")) ?? "";
  assert.match(essential, /dpkg-divert .*--add \/usr\/sbin\/update-initramfs/);
  assert.ok(
    arm.some((a) => /^--customize-hook=.*dpkg-divert .*--remove \/usr\/sbin\/update-initramfs/.test(a)),
  );
  assert.ok(arm.some((a) => /^--customize-hook=.*apt-get .*download grub-efi-arm64-bin$/.test(a)));
  assert.deepEqual(arm.slice(-3), ["bookworm", "/t", "http://deb.debian.org/debian"]);
});

test("images/aarch64.yaml is valid and differs from default.yaml only where arm64 needs it", () => {
  const arm = parseImageDescription(readFileSync("images/aarch64.yaml", "utf8"), "images/aarch64.yaml");
  const x86 = parseImageDescription(readFileSync("images/default.yaml", "utf8"), "images/default.yaml");
  assert.equal(arm.eos.node, "debian");
  assert.deepEqual(arm.kernel.cmdline, ["console=ttyAMA0"]);
  // Both on trixie (its podman needs nftables), so one package list: the arm64 root differs only in
  // what packageList adds for the architecture.
  assert.equal(arm.distribution.suite, "trixie");
  assert.deepEqual(arm.distribution, x86.distribution);
  assert.deepEqual(arm.packages, x86.packages);
  assert.deepEqual(arm.services, x86.services);
});

test("aarch64 machines: virt with pauth-impdef and without LPA2 under TCG, host CPU under KVM, AAVMF pflash, TIS device", () => {
  const plan = {
    accel: "tcg" as const,
    cpus: 2,
    memoryMiB: 1024,
    firmwareCode: "/usr/share/AAVMF/AAVMF_CODE.fd",
    firmwareVars: "/w/AAVMF_VARS.fd",
    disk: "/w/disk.qcow2",
    sshPort: 2222,
    interactive: false,
    tpmSocket: "/w/tpm.sock",
  };
  const arm = machineArgv({ ...plan, architecture: "aarch64" });
  const after = (args: string[], flag: string) => args[args.indexOf(flag) + 1];
  assert.equal(after(arm, "-machine"), "virt");
  assert.equal(after(arm, "-cpu"), "max,pauth-impdef=on,lpa2=off");
  assert.ok(arm.includes("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd"));
  assert.ok(arm.includes("tpm-tis-device,tpmdev=tpm0"));
  const kvm = machineArgv({ ...plan, architecture: "aarch64", accel: "kvm" });
  assert.equal(after(kvm, "-cpu"), "host");
  const x86 = machineArgv(plan);
  assert.equal(after(x86, "-machine"), "q35");
  assert.equal(after(x86, "-cpu"), "max");
  assert.ok(x86.includes("tpm-tis,tpmdev=tpm0"));
});

test("an image's architecture is its root slot type", () => {
  assert.equal(architectureOfRootType(PartitionType.linuxRootArm64.toLowerCase()), "aarch64");
  assert.equal(architectureOfRootType(PartitionType.linuxRootX86_64), "x86_64");
  assert.equal(architectureOfRootType(PartitionType.linuxData), undefined);
});

test("device code runs on Debian's Node 18 (eos.node: debian): only core/crc32.ts touches zlib's crc32", () => {
  // grep exits 1 when nothing matches.
  const r = spawnSync("grep", ["-rlE", 'import \\{[^}]*crc32[^}]*\\} from "node:zlib"', "src"]);
  const offenders = r.stdout
    .toString()
    .split("\n")
    .filter((f) => f && f !== "src/core/crc32.ts");
  assert.deepEqual(offenders, []);
});

test("the console's login prompt is found when the kernel's lines land inside getty's", () => {
  // As CI's trixie demo saw it after the kexec: getty wrote "eos " and "login: " apart.
  const interleaved =
    "EOS 2.0.0 (demo) eos ttyS0\r\n\r\neos [   35.310136] kvm_amd: Nested Virtualization enabled\r\nlogin: root (automatic login)\r\n";
  assert.match(interleaved, LOGIN_PROMPT);
  assert.match(interleaved, LOGIN_OR_SHELL);
  assert.match("\r\neos login: ", LOGIN_PROMPT);
  assert.doesNotMatch("[  OK  ] Started systemd-logind.service - User Login Management.\r\n", LOGIN_PROMPT);
  assert.doesNotMatch("eos ttyS0\r\n", LOGIN_OR_SHELL);
  assert.match("root@eos:~# ", LOGIN_OR_SHELL);
});
