/** VM flakes, pure parts: sizes, the vm: schema, boot args, QEMU argv, KIS members, the sci protocol. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { EosError } from "../../src/core/errors.ts";
import { parseOverlaySize, parseSizeOrUndefined, formatSize } from "../../src/core/flakes/size.ts";
import {
  bootArgs,
  parsePortOption,
  vmFlakeDocument,
  vmFlakeFromDocuments,
  DEFAULT_BOOT_ARGS,
} from "../../src/core/flakes/vm.ts";
import { qemuArgv, qemuValue } from "../../src/core/flakes/vm-qemu.ts";
import {
  checksumPlan,
  classifyKisMembers,
  classifySource,
  parseSha256File,
} from "../../src/core/flakes/kis.ts";
import {
  commandFrame,
  encodeFrame,
  exitStatus,
  FrameDecoder,
  stdinFrames,
  MAX_FRAME,
} from "../../src/core/flakes/sci-protocol.ts";

test("sizes: binary units with or without i/B, decimal KB/MB/GB/TB", () => {
  assert.equal(parseSizeOrUndefined("20GiB"), 20 * 2 ** 30);
  assert.equal(parseSizeOrUndefined("20g"), 20 * 2 ** 30);
  assert.equal(parseSizeOrUndefined("20G"), 20 * 2 ** 30);
  assert.equal(parseSizeOrUndefined("512MiB"), 512 * 2 ** 20);
  assert.equal(parseSizeOrUndefined("1.5G"), 1.5 * 2 ** 30);
  assert.equal(parseSizeOrUndefined("20GB"), 20e9);
  assert.equal(parseSizeOrUndefined("4096"), 4096);
  for (const bad of ["", "GiB", "20 parsecs", "-1G", "20XB", "1e9", "20GiBs"])
    assert.equal(parseSizeOrUndefined(bad), undefined, bad);
  assert.throws(
    () => parseOverlaySize("20 parsecs", "--overlay-size"),
    (e: EosError) => e.code === "USAGE" && /--overlay-size "20 parsecs" is not a size/.test(e.message),
  );
  assert.throws(() => parseOverlaySize("1M", "--overlay-size"), /between 16MiB and 16TiB/);
  assert.equal(formatSize(20 * 2 ** 30), "20GiB");
});

const file = "/usr/share/flakes/mybash.yaml";
const base = {
  vm: {
    name: "leap",
    target_app_path: "/bin/bash",
    host_app_path: "/usr/share/flakes/bin/mybash",
    runtime: {
      runas: "root",
      resume: false,
      firecracker: {
        overlay_size: "20GiB",
        rootfs_image_path: "/var/lib/firecracker/images/leap/rootfs",
        kernel_image_path: "/var/lib/firecracker/images/leap/kernel",
      },
    },
  },
};

test("vm: schema with flake-pilot's defaults, NAME.d fragments merged", () => {
  const flake = vmFlakeFromDocuments([
    { file, data: base },
    {
      file: "/usr/share/flakes/mybash.d/10-mem.yaml",
      data: { vm: { runtime: { resume: true, firecracker: { mem_size_mib: 512 } } } },
    },
  ]);
  assert.equal(flake.name, "leap");
  assert.equal(flake.runtime.resume, true);
  assert.equal(flake.runtime.firecracker.memSizeMib, 512);
  assert.equal(flake.runtime.firecracker.vcpuCount, 2);
  assert.equal(flake.runtime.firecracker.overlayBytes, 20 * 2 ** 30);
  assert.deepEqual(flake.runtime.firecracker.bootArgs, DEFAULT_BOOT_ARGS);
  assert.equal(flake.runtime.engine, "auto");
  // the document written at registration reads back the same
  const again = vmFlakeFromDocuments([{ file, data: vmFlakeDocument(flake) as Record<string, unknown> }]);
  assert.deepEqual(again, flake);
});

test("vm: bad values name the file and key", () => {
  const bad = (patch: Record<string, unknown>, re: RegExp) =>
    assert.throws(() => vmFlakeFromDocuments([{ file, data: { vm: { ...base.vm, ...patch } } }]), re);
  bad(
    { runtime: { firecracker: { overlay_size: "lots" } } },
    /mybash\.yaml: vm\.runtime\.firecracker\.overlay_size: .*not a size/,
  );
  bad(
    { runtime: { firecracker: { cache_type: "None" } } },
    /vm\.runtime\.firecracker\.cache_type: must be Unsafe or Writeback/,
  );
  bad({ runtime: { engine: "xen" } }, /vm\.runtime\.engine: must be firecracker, qemu or auto/);
  bad({ runtime: { firecracker: { vcpu_count: 3 } } }, /vcpu_count must be 1 or an even number/);
  bad({ runtime: { bogus: 1 } }, /unknown key vm\.runtime\.bogus/);
  bad({ name: "../etc" }, /vm\.name: must be a VM image name/);
  assert.throws(
    () => vmFlakeFromDocuments([{ file, data: { vm: { name: "leap" } } }]),
    /missing required key vm\.host_app_path/,
  );
});

test("boot args: the flake's, then the pilot's own keys (replacing any the flake had)", () => {
  const line = bootArgs([...DEFAULT_BOOT_ARGS, "overlay_root=/dev/vdz", "sci.resume=0"], {
    engine: "qemu",
    overlay: true,
    resume: true,
    debug: true,
    vsockPort: 52,
    net: "10.0.2.15/24,10.0.2.2",
  });
  assert.equal(
    line,
    "init=/usr/sbin/sci console=ttyS0 root=/dev/vda acpi=off rd.neednet=1 ip=dhcp quiet overlay_root=/dev/vdb sci.channel=virtio:sci.0 sci.resume=1 sci.debug=1 sci.net=10.0.2.15/24,10.0.2.2 panic=-1",
  );
  assert.match(
    bootArgs([], { engine: "firecracker", overlay: false, resume: false, debug: false, vsockPort: 1234 }),
    /^sci\.channel=vsock:1234 panic=-1$/,
  );
  assert.throws(
    () => bootArgs(["a b"], { engine: "qemu", overlay: false, resume: false, debug: false, vsockPort: 52 }),
    /printable ASCII without spaces/,
  );
  assert.equal(parsePortOption("2000"), 2000);
  assert.throws(() => parsePortOption(true), /%port needs a number/);
  assert.throws(() => parsePortOption("70000"), /1\.\.65535/);
});

test("QEMU argv: same image, virtio-serial channel, commas escaped, no shell", () => {
  const argv = qemuArgv({
    name: "mybash@one",
    machine: "q35",
    accel: "tcg",
    kernel: "/img/kernel",
    initrd: "/img/initrd",
    bootArgs: "console=ttyS0 sci.net=10.0.2.15/24,10.0.2.2",
    rootfs: "/img/root,fs",
    overlay: "/run/x/overlay.img",
    cacheType: "Writeback",
    vcpuCount: 2,
    memSizeMib: 256,
    socket: "/run/x/sci.sock",
    consoleLog: "/run/x/console.log",
    network: true,
  });
  const joined = argv.join(" ");
  assert.ok(argv.includes("-no-reboot"));
  assert.equal(
    argv[argv.indexOf("-append") + 1],
    "console=ttyS0 sci.net=10.0.2.15/24,10.0.2.2",
    "the command line is one argument, commas kept",
  );
  assert.match(
    joined,
    /id=rootfs,file=\/img\/root,,fs,format=raw,if=none,readonly=on,cache=writeback -device virtio-blk-pci,drive=rootfs/,
  );
  assert.match(joined, /-drive id=overlay,file=\/run\/x\/overlay\.img,/);
  assert.ok(joined.indexOf("drive=rootfs") < joined.indexOf("drive=overlay"), "root is vda, overlay vdb");
  assert.match(
    joined,
    /socket,id=sci,path=\/run\/x\/sci\.sock,server=on,wait=off -device virtserialport,chardev=sci,name=sci\.0/,
  );
  assert.match(joined, /-netdev user,id=net0 -device virtio-net-pci,netdev=net0/);
  assert.equal(qemuValue("a,b"), "a,,b");
  assert.ok(
    !qemuArgv({
      ...JSON.parse(JSON.stringify({})),
      name: "x",
      machine: "q35",
      accel: "kvm",
      kernel: "/k",
      bootArgs: "",
      rootfs: "/r",
      cacheType: "Unsafe",
      vcpuCount: 1,
      memSizeMib: 64,
      socket: "/s",
      consoleLog: "/c",
      network: false,
    }).includes("-netdev"),
  );
});

test("KIS members: kernel, initrd, checksum, root image; missing parts are errors", () => {
  const m = classifyKisMembers(["x.ext4", "x.kernel", "x.initrd", "x.sha256", "x.packages"], "kis");
  assert.deepEqual(m, { rootfs: "x.ext4", kernel: "x.kernel", initrd: "x.initrd", sha256: "x.sha256" });
  assert.throws(
    () => classifyKisMembers(["x.ext4", "x.initrd"], "kis.tar.xz"),
    (e: EosError) => e.code === "VM" && /kis\.tar\.xz: the KIS image has no kernel/.test(e.message),
  );
  assert.throws(() => classifyKisMembers(["x.kernel", "x.sha256"], "kis"), /has no root file system image/);
  assert.throws(() => classifyKisMembers(["a.raw", "b.raw", "x.kernel"], "kis"), /cannot tell which file/);
  const sums = parseSha256File(`${"a".repeat(64)}  x.ext4\n${"b".repeat(64)} *dir/x.kernel\n`, "x.sha256");
  assert.deepEqual(checksumPlan(sums, m, "kis"), [
    ["x.ext4", "a".repeat(64)],
    ["x.kernel", "b".repeat(64)],
  ]);
  assert.deepEqual(checksumPlan(parseSha256File("c".repeat(64), "s"), m, "kis"), [
    ["x.ext4", "c".repeat(64)],
  ]);
  assert.throws(
    () => checksumPlan(parseSha256File(`${"a".repeat(64)}  other.img`, "s"), m, "kis"),
    /names other\.img, which is not in the image/,
  );
  assert.throws(() => parseSha256File("nonsense", "s"), /not a sha256 line/);
});

test("sources: https always; http, file and paths only with FLAKE_ALLOW_INSECURE_TRANSPORT", () => {
  assert.equal(classifySource("https://x/y.tar.xz", "--kis-image", false).kind, "https");
  assert.throws(
    () => classifySource("http://x/y", "--kis-image", false),
    (e: EosError) => e.code === "REFUSED" && /FLAKE_ALLOW_INSECURE_TRANSPORT/.test(e.hint ?? ""),
  );
  assert.throws(() => classifySource("/tmp/y", "--kis-image", false), /only https/);
  assert.equal(classifySource("/tmp/y", "--kis-image", true).path, "/tmp/y");
  assert.equal(classifySource("file:///tmp/a%20b", "--kis-image", true).path, "/tmp/a b");
  assert.throws(() => classifySource("ftp://x", "--rootfs", true), /neither an https/);
});

test("sci protocol frames round-trip in pieces", () => {
  const d = new FrameDecoder();
  const bytes = Buffer.concat([
    commandFrame(["/bin/bash", "-c", "exit 7"]),
    ...stdinFrames(Buffer.alloc(MAX_FRAME + 10, 1)),
    encodeFrame("i"),
    encodeFrame("X", Buffer.from([0, 0, 0, 7])),
  ]);
  const frames = [];
  for (let i = 0; i < bytes.length; i += 1000) frames.push(...d.push(bytes.subarray(i, i + 1000)));
  assert.deepEqual(
    frames.map((f) => f.type),
    ["C", "I", "I", "i", "X"],
  );
  assert.equal(frames[0]?.payload.toString(), "/bin/bash\0-c\0exit 7\0");
  assert.equal(frames[1]?.payload.length, MAX_FRAME);
  assert.equal(frames[2]?.payload.length, 10);
  assert.equal(exitStatus(frames[4] as { type: string; payload: Buffer }), 7);
  assert.throws(() => commandFrame(["a\0b"]), /NUL byte/);
  assert.throws(() => new FrameDecoder().push(Buffer.from([0x4f, 0xff, 0xff, 0xff, 0xff])), /protocol error/);
});
