/**
 * `eos flash` on real loop devices: what it refuses (a fixed disk without
 * --force, a partition, a mounted disk, the running system, a disk too small,
 * no confirmation), and that a write it accepts is what the image holds,
 * checked against the signed manifest.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, open, readFile, rm, stat, symlink, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { attachLoop } from "../helpers/device.ts";
import { makeSampleImage, xzFile, zstdFile } from "../helpers/sample-image.ts";
import { mustRun, runEos } from "../helpers/run.ts";

const MiB = 1024 * 1024;

async function sha256Of(path: string, length: number): Promise<string> {
  const handle = await open(path, "r");
  try {
    const buf = Buffer.alloc(length);
    await handle.read(buf, 0, length, 0);
    return createHash("sha256").update(buf).digest("hex");
  } finally {
    await handle.close();
  }
}

describe("eos flash on loop devices", () => {
  let dir: string;
  let image: string;
  let imageBytes: number;
  let imageSha: string;
  let xz: string;
  let zst: string;
  let pub: string;
  let otherManifest: string;
  const loops: string[] = [];
  let big: string;
  let small: string;
  let zeroSha: string;

  const loopOn = async (name: string, bytes: number): Promise<string> => {
    const file = join(dir, name);
    await writeFile(file, "");
    await truncate(file, bytes);
    const loop = (await mustRun("losetup", ["--show", "-f", file])).stdout.toString().trim();
    loops.push(loop);
    return loop;
  };
  const flash = (args: string[], input = "", env: NodeJS.ProcessEnv = process.env) =>
    runEos("eos", ["flash", ...args], { input, env });
  const untouched = async (loop: string) =>
    assert.equal(await sha256Of(loop, imageBytes), zeroSha, `${loop} was written`);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "eos-flash-"));
    await mustRun(process.execPath, [join("dist", "eos.mjs"), "keygen", "--out", join(dir, "keys")]);
    pub = join(dir, "keys/release.pub");
    image = join(dir, "EOS.raw");
    await makeSampleImage(image, { version: "1.0.0" });
    const sign = (raw: string, version: string) =>
      mustRun(process.execPath, [
        join("dist", "eos.mjs"),
        "manifest",
        raw,
        "--key",
        join(dir, "keys/release.key"),
        "--name",
        "EOS",
        "--version",
        version,
      ]);
    await sign(image, "1.0.0");
    const other = join(dir, "Other.raw");
    await makeSampleImage(other, { version: "2.0.0" });
    await sign(other, "2.0.0");
    otherManifest = `${other}.manifest.json`;
    imageBytes = (await stat(image)).size;
    imageSha = createHash("sha256")
      .update(await readFile(image))
      .digest("hex");
    zeroSha = createHash("sha256").update(Buffer.alloc(imageBytes)).digest("hex");
    xz = await xzFile(image);
    zst = await zstdFile(image);
    big = await loopOn("big.disk", imageBytes + 16 * MiB);
    small = await loopOn("small.disk", imageBytes - MiB);
  });

  after(async () => {
    for (const loop of loops) await mustRun("losetup", ["-d", loop]).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });

  it("refuses a disk that does not say it is removable unless --force, and asks before writing", async () => {
    const fixed = await flash([xz, big, "--yes"]);
    assert.equal(fixed.code, 3, fixed.stderr);
    assert.match(fixed.stderr, /error \[REFUSED\]: .*not a removable disk \(loop device on .*big\.disk\)/);
    assert.match(fixed.stderr, /hint: .*--force/);
    const unanswered = await flash([xz, big, "--force"]);
    assert.equal(unanswered.code, 3, unanswered.stderr);
    assert.match(unanswered.stderr, /Type yes to write/);
    assert.match(unanswered.stderr, /not confirmed, nothing written/);
    const declined = await flash([xz, big, "--force"], "no\n");
    assert.equal(declined.code, 3, declined.stderr);
    await untouched(big);
  });

  it("refuses, even with --force: a partition, a mounted disk, the running system, a disk too small", async () => {
    const tooSmall = await flash([xz, small, "--force", "--yes"]);
    assert.equal(tooSmall.code, 3, tooSmall.stderr);
    assert.match(tooSmall.stderr, /smaller than the image \(\d+ bytes\)/);
    await untouched(small);

    const partitioned = join(dir, "partitioned.disk");
    await writeFile(partitioned, await readFile(image));
    const withParts = await attachLoop(partitioned);
    loops.push(withParts);
    const part = await flash([xz, `${withParts}p2`, "--force", "--yes"]);
    assert.equal(part.code, 3, part.stderr);
    assert.match(part.stderr, /is a partition, not a whole disk/);

    // A disk that looks fine to every check but is mounted.
    await mustRun("mkfs.ext4", ["-q", "-F", big]);
    const mountPoint = join(dir, "mnt");
    await mkdir(mountPoint);
    await mustRun("mount", [big, mountPoint]);
    try {
      await writeFile(join(mountPoint, "keep.txt"), "data that must survive\n");
      const mounted = await flash([xz, big, "--force", "--yes"]);
      assert.equal(mounted.code, 3, mounted.stderr);
      assert.match(mounted.stderr, new RegExp(`in use: ${mountPoint}`));
      assert.equal(await readFile(join(mountPoint, "keep.txt"), "utf8"), "data that must survive\n");
    } finally {
      await mustRun("umount", [mountPoint]);
    }

    // The running system: a host whose mount table says the disk holds "/" (EOS_ROOT points
    // /proc at a crafted mountinfo; /sys stays the real one).
    const fakeRoot = join(dir, "host");
    await mkdir(join(fakeRoot, "proc/self"), { recursive: true });
    await symlink("/sys", join(fakeRoot, "sys"));
    const rdev = (await stat(small)).rdev;
    await writeFile(
      join(fakeRoot, "proc/self/mountinfo"),
      `23 1 ${Math.floor(rdev / 256)}:${rdev % 256} / / rw,relatime - ext4 ${small} rw\n`,
    );
    await writeFile(join(fakeRoot, "proc/swaps"), "Filename Type Size Used Priority\n");
    const running = await flash([xz, small, "--force", "--yes"], "", { ...process.env, EOS_ROOT: fakeRoot });
    assert.equal(running.code, 3, running.stderr);
    assert.match(running.stderr, /holds the running system \(\/\)/);
    await untouched(small);
  });

  it("writes an xz image after a typed yes, reads it back, and checks it against the signed manifest", async () => {
    await mustRun("dd", ["if=/dev/zero", `of=${big}`, "bs=1M", "count=8", "status=none"]);
    const r = await flash([xz, big, "--force", "--pub", pub], "yes\n");
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /disk: {2}.*loop device on .*big\.disk.*fixed/);
    assert.match(r.stderr, /writing .*: .* 100\.0%/);
    assert.match(r.stdout.toString(), /read back: sha256 [0-9a-f]{64} matches/);
    assert.match(
      r.stdout.toString(),
      /manifest: {2}EOS 1\.0\.0: p\.lxreadonly, p\.UEFI match .*signature good/,
    );
    assert.equal(await sha256Of(big, imageBytes), imageSha);
  });

  it("writes a zstd image with --json; a manifest of another image fails the check", async () => {
    await mustRun("dd", ["if=/dev/zero", `of=${big}`, "bs=1M", "count=8", "status=none"]);
    const r = await flash([zst, big, "--force", "--yes", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const result = JSON.parse(r.stdout.toString()) as { bytes: number; sha256: string; compression: string };
    assert.equal(result.bytes, imageBytes);
    assert.equal(result.sha256, imageSha);
    assert.equal(result.compression, "zstd");
    assert.equal(await sha256Of(big, imageBytes), imageSha);

    const wrong = await flash([image, big, "--force", "--yes", "--manifest", otherManifest]);
    assert.equal(wrong.code, 3, wrong.stderr);
    assert.match(wrong.stderr, /error \[HASH_MISMATCH\]: .*partition p\.lxreadonly does not match/);
  });

  it("names what is wrong with bad arguments: a missing image, a file that is not a disk", async () => {
    const missing = await flash([join(dir, "nope.raw.xz"), big, "--yes"]);
    assert.equal(missing.code, 3);
    assert.match(missing.stderr, /error \[NOT_FOUND\]: .*nope\.raw\.xz: ENOENT/);
    const notDisk = await flash([xz, join(dir, "big.disk"), "--force", "--yes"]);
    assert.equal(notDisk.code, 3);
    assert.match(notDisk.stderr, /big\.disk: not a block device/);
    assert.doesNotMatch(missing.stderr + notDisk.stderr, /\n\s+at /, "no stack trace");
  });
});
