/**
 * `os-update --firmware` on the Raspberry Pi image (issue 17): a device on
 * an RPI disk v1 (the real ESP step of `eos build --profile RPI`, as
 * rpi-disk.test.ts builds it) takes v2's Pi boot chain from the real server,
 * and keeps EFI/ (GRUB, grub.cfg, grubenv). The image's name carries no
 * architecture, so the server may publish an x86_64 manifest of it under a
 * channel; only the device's own architecture stops it.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import type { ChildProcess } from "node:child_process";
import { DIST, run, runEos } from "../helpers/run.ts";
import { CRASH_ENV } from "../../src/io/crash-point.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";
import { makeDevice } from "../helpers/device.ts";
import { startServer } from "../helpers/serve.ts";
import { zstdFile } from "../helpers/sample-image.ts";
import { fatFile, MTOOLS_ENV } from "../helpers/arm64-esp.ts";
import { makeRpiDisk, rpiDebsMissing } from "../helpers/rpi-disk.ts";

const NAME = "EOS-RPI";
const WRONG_ARCH = `${NAME}-X86`;
const EFI_FILES = ["EFI/BOOT/BOOTAA64.EFI", "EFI/BOOT/grub.cfg", "EFI/BOOT/grubenv"];

function mtools(command: string, args: string[], input?: Buffer): void {
  const r = spawnSync(command, args, { env: MTOOLS_ENV, ...(input ? { input } : {}) });
  assert.equal(r.status, 0, `${command} ${args.join(" ")}: ${r.stderr.toString()}`);
}

/** Every file below dir (relative path → bytes). */
async function files(dir: string, base = dir, out = new Map<string, Buffer>()): Promise<Map<string, Buffer>> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = join(dir, entry.name);
    if (entry.isDirectory()) await files(full, base, out);
    else out.set(relative(base, full), await readFile(full));
  }
  return out;
}

/** The files outside EFI/, which --firmware replaces. */
function outside(m: Map<string, Buffer>): Map<string, Buffer> {
  return new Map([...m].filter(([path]) => path.split("/")[0]?.toUpperCase() !== "EFI"));
}

/** A FAT partition's files, as a device that mounts it sees them. */
async function espFiles(part: string, into: string): Promise<Map<string, Buffer>> {
  await mkdir(into, { recursive: true });
  mtools("mcopy", ["-s", "-n", "-m", "-i", part, "::/*", `${into}/`]);
  return files(into);
}

let skip: string | undefined;
let world: World;
let server: ChildProcess | undefined;
let url: string;
let work: string;
let v1Raw: string;
let v1Part: string;
let v2Part: string;
let v1Manifest: { version: string; partitions: { root: { sha256: string; size: number } } };

before(async () => {
  skip = await rpiDebsMissing();
  if (skip) return;
  work = await mkdtemp(join(tmpdir(), "eos-rpi-firmware-"));
  world = await makeWorld();
  await writeServerConfig(world, [
    { image: `${world.origin.url}/${NAME}.raw.zst`, name: NAME },
    { image: `${world.origin.url}/${WRONG_ARCH}.raw.zst`, name: WRONG_ARCH },
  ]);
  const disk = await makeRpiDisk(work);
  const signedV1 = await releaseImage(world, NAME, "1.0.0", {
    disk: disk.raw,
    arch: "aarch64",
    compress: zstdFile,
  });
  v1Manifest = JSON.parse(await readFile(`${signedV1}.manifest.json`, "utf8")) as typeof v1Manifest;
  v1Raw = join(work, "device-v1.raw");
  await copyFile(signedV1, v1Raw);
  v1Part = `${v1Raw}@@${disk.layout.esp.offset}`;

  // v2: config.txt gains an overlay that is new in v2, one DTB changes, one goes; v2's GRUB and grub.cfg differ too.
  const v2Raw = join(work, "v2.raw");
  await copyFile(disk.raw, v2Raw);
  v2Part = `${v2Raw}@@${disk.layout.esp.offset}`;
  const put = async (path: string, bytes: Buffer) => {
    const file = join(work, "put");
    await writeFile(file, bytes);
    mtools("mcopy", ["-o", "-i", v2Part, file, `::/${path}`]);
  };
  await put(
    "config.txt",
    Buffer.concat([fatFile(v2Part, "config.txt"), Buffer.from("dtoverlay=disable-bt\n")]),
  );
  await put(
    "bcm2711-rpi-4-b.dtb",
    Buffer.concat([fatFile(v2Part, "bcm2711-rpi-4-b.dtb"), Buffer.from("v2")]),
  );
  mtools("mmd", ["-i", v2Part, "::/overlays"]);
  await put("overlays/disable-bt.dtbo", Buffer.from("overlay of 2.0.0\n"));
  mtools("mdel", ["-i", v2Part, "::/bcm2837-rpi-3-b.dtb"]);
  await put(
    "EFI/BOOT/grub.cfg",
    Buffer.concat([fatFile(v2Part, "EFI/BOOT/grub.cfg"), Buffer.from("# 2.0.0\n")]),
  );
  await put(
    "EFI/BOOT/BOOTAA64.EFI",
    Buffer.concat([fatFile(v2Part, "EFI/BOOT/BOOTAA64.EFI"), Buffer.from("v2")]),
  );
  await releaseImage(world, NAME, "2.0.0", { disk: v2Raw, arch: "aarch64", compress: zstdFile });
  await releaseImage(world, WRONG_ARCH, "2.0.0", {
    disk: v2Raw,
    manifestName: NAME,
    arch: "x86_64",
    compress: zstdFile,
  });
  const fetched = await runEos("os-update-server", ["fetch", "--config", world.config]);
  assert.equal(fetched.code, 0, fetched.stderr);
  const running = await startServer({ config: world.config });
  server = running.child;
  url = running.url;
});

after(async () => {
  if (skip) return;
  server?.kill("SIGTERM");
  await world.origin.close();
  await rm(world.dir, { recursive: true, force: true });
  await rm(work, { recursive: true, force: true });
});

test("--firmware on an RPI disk: v2's Pi boot chain byte for byte, a removed DTB gone, EFI/ untouched; an x86_64 manifest is refused", async (t) => {
  if (skip) {
    t.skip(skip);
    return;
  }
  const device = await makeDevice(v1Raw, v1Manifest, {
    config: `update:\n  name: ${WRONG_ARCH}\n  url: ${url}\n`,
    keys: [join(world.keysDir, "release.pub")],
  });
  try {
    // The device's ESP is the v1 disk's, boot control block included; its root says what it is.
    await rm(device.esp, { recursive: true });
    await espFiles(v1Part, device.esp);
    await mkdir(join(device.root, "etc/eos"));
    await writeFile(join(device.root, "etc/eos/image"), `NAME=${NAME}\nVERSION=1.0.0\nARCH=aarch64\n`);
    const before = await files(device.esp);
    for (const f of [
      "config.txt",
      "start4.elf",
      "fixup4.dat",
      "u-boot.bin",
      "bcm2837-rpi-3-b.dtb",
      ...EFI_FILES,
    ])
      assert.ok(before.has(f), `v1's ESP has ${f}`);

    const refused = await device.run(["--firmware"]);
    assert.equal(refused.code, 3, refused.stderr);
    assert.match(refused.stderr, /REFUSED.*built for x86_64, this device is aarch64/);
    assert.deepEqual(await files(device.esp), before, "a refused manifest changes nothing on the ESP");

    await writeFile(join(device.root, "etc/os-update.yml"), `update:\n  name: ${NAME}\n  url: ${url}\n`);
    // Killed after its first rename: the one file switched is v2's new overlay; config.txt, which
    // names it, is still v1's (it goes last), so a Pi cut off here boots v1's chain.
    const cut = await run(process.execPath, [join(DIST, "os-update.mjs"), "--firmware"], {
      env: { ...process.env, EOS_ROOT: device.root, [CRASH_ENV]: "firmware:switched-partly" },
    });
    assert.equal(cut.signal, "SIGKILL", cut.stderr);
    const mid = outside(await files(device.esp));
    const switched = [...mid].filter(([p, b]) => !p.endsWith(".eos-new") && !before.get(p)?.equals(b));
    assert.deepEqual(
      switched.map(([p]) => p),
      ["overlays/disable-bt.dtbo"],
    );
    assert.deepEqual(mid.get("config.txt"), before.get("config.txt"));
    const r = await device.run(["--firmware"]);
    assert.equal(r.code, 0, r.stderr);
    const v2 = await espFiles(v2Part, join(work, "v2-esp"));
    const after = await files(device.esp);
    // Outside EFI/ the ESP is v2's (the run resumed the cut one): changed and new files, no removed one, no *.eos-new.
    assert.deepEqual(outside(after), outside(v2));
    assert.match(
      after.get("config.txt")?.toString() ?? "",
      /^kernel=u-boot\.bin$[^]*^dtoverlay=disable-bt$/m,
    );
    assert.equal(after.get("overlays/disable-bt.dtbo")?.toString(), "overlay of 2.0.0\n");
    assert.equal(after.has("bcm2837-rpi-3-b.dtb"), false);
    // EFI/ is the device's own, though v2's GRUB and grub.cfg differ.
    for (const f of EFI_FILES) assert.deepEqual(after.get(f), before.get(f), `${f} untouched`);
    assert.notDeepEqual(v2.get("EFI/BOOT/grub.cfg"), before.get("EFI/BOOT/grub.cfg"));
    assert.notDeepEqual(v2.get("EFI/BOOT/BOOTAA64.EFI"), before.get("EFI/BOOT/BOOTAA64.EFI"));
    assert.match(
      r.stdout,
      new RegExp(`firmware of 2\\.0\\.0: ${outside(v2).size} files written, 1 removed; EFI/ kept`),
    );
  } finally {
    await device.close();
  }
});
