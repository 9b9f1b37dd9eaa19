/**
 * Issue 14 item 19: `npm run package` builds a .deb that installs EOS's
 * commands on a plain Debian host. Installed with apt from the local file in
 * a clean bookworm container (mmdebstrap rootfs, `podman import`), where
 * `os-update-server --help`, `flake-ctl --version` and `systemd-analyze
 * verify` of the installed units must work. The rootfs is kept in .tmp/
 * between runs (it is a download); EOS_SKIP_DEB_CONTAINER=1 skips that part.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { CONTAINERS_CONF } from "../helpers/podman-fixture.ts";
import { REPO, run } from "../helpers/run.ts";

function containerSkipReason(): string | undefined {
  if (process.env.EOS_SKIP_DEB_CONTAINER) return "EOS_SKIP_DEB_CONTAINER is set";
  if (process.getuid?.() !== 0) return "needs root (podman import and run)";
  for (const tool of ["podman", "mmdebstrap"]) {
    if (spawnSync(tool, ["--version"]).status !== 0) return `${tool} is not installed`;
  }
  return undefined;
}

describe("the Debian package", () => {
  let dir: string;
  let deb: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "eos-deb-"));
    const r = await run(process.execPath, [join(REPO, "scripts", "package.mjs"), "--out", dir]);
    assert.equal(r.code, 0, r.stderr);
    deb = r.stdout.toString().trim().split("\n").pop() ?? "";
    assert.ok(existsSync(deb), deb);
  });
  after(() => {
    const storage = join(dir, "storage.conf");
    if (existsSync(storage)) {
      const env = { ...process.env, CONTAINERS_CONF, CONTAINERS_STORAGE_CONF: storage };
      spawnSync("podman", ["image", "rm", "--all", "--force"], { env });
    }
    // containers/storage keeps <graphroot>/overlay mounted; release it before deleting.
    const mounts = readFileSync("/proc/self/mountinfo", "utf8")
      .split("\n")
      .map((l) => l.split(" ")[4])
      .filter((m): m is string => m !== undefined && m.startsWith(`${dir}/`))
      .sort((a, b) => b.length - a.length);
    for (const m of mounts) spawnSync("umount", ["-l", m]);
    rmSync(dir, { recursive: true, force: true });
  });

  test("has the commands in /usr/bin, the units, and Node as a dependency", async () => {
    const info = await run("dpkg-deb", ["--field", deb, "Package", "Architecture", "Depends"]);
    assert.match(
      info.stdout.toString(),
      /^Package: eos\nArchitecture: all\nDepends: nodejs \(>= 18\.19\), libjemalloc2\n$/,
    );
    const contents = (await run("dpkg-deb", ["--contents", deb])).stdout.toString();
    for (const cmd of [
      "eos",
      "os-update",
      "os-update-server",
      "flake-ctl",
      "podman-pilot",
      "firecracker-pilot",
    ]) {
      assert.match(contents, new RegExp(`\\./usr/bin/${cmd} -> \\.\\./lib/eos/dist/${cmd}\\.mjs`));
    }
    for (const unit of ["os-fetch.service", "os-update-daemon@.timer", "os-update-server.service"]) {
      assert.match(
        contents,
        new RegExp(`root/root .* \\./usr/lib/systemd/system/${unit.replace(".", "\\.")}\\n`),
      );
    }
  });

  test(
    "installs with apt in a clean bookworm container; the commands and units work",
    { skip: containerSkipReason() },
    async () => {
      const cache = join(REPO, ".tmp");
      mkdirSync(cache, { recursive: true });
      const rootfs = join(cache, "debian-bookworm-minbase-systemd.tar");
      if (!statSync(rootfs, { throwIfNoEntry: false })?.isFile()) {
        const made = await run("mmdebstrap", [
          "--variant=minbase",
          "--format=tar",
          "--include=systemd",
          "bookworm",
          `${rootfs}.part`,
          "http://deb.debian.org/debian",
        ]);
        assert.equal(made.code, 0, made.stderr);
        await run("mv", [`${rootfs}.part`, rootfs]);
      }
      const storage = join(dir, "storage.conf");
      writeFileSync(
        storage,
        `[storage]\ndriver = "overlay"\ngraphroot = "${dir}/storage"\nrunroot = "${dir}/run"\n`,
      );
      const env = { ...process.env, CONTAINERS_CONF, CONTAINERS_STORAGE_CONF: storage };
      const imported = await run("podman", ["import", rootfs, "localhost/eos-deb-test"], { env });
      assert.equal(imported.code, 0, imported.stderr);
      const script = [
        "set -e",
        "export DEBIAN_FRONTEND=noninteractive",
        "apt-get update -q >/dev/null",
        "apt-get install -y -q --no-install-recommends /tmp/eos.deb >/dev/null",
        "echo '--- help'",
        "os-update-server --help",
        "echo '--- version'",
        "flake-ctl --version",
        "echo '--- verify'",
        "systemd-analyze verify /usr/lib/systemd/system/os-fetch.service /usr/lib/systemd/system/os-update-daemon@x.timer /usr/lib/systemd/system/os-update-server.service /usr/lib/systemd/system/update_commit.service 2>&1",
        "echo '--- done'",
      ].join("\n");
      const r = await run(
        "podman",
        [
          "run",
          "--rm",
          "--network",
          "host",
          "-v",
          `${deb}:/tmp/eos.deb:ro`,
          "localhost/eos-deb-test",
          "sh",
          "-c",
          script,
        ],
        { env },
      );
      const out = r.stdout.toString();
      assert.equal(r.code, 0, `${out}\n${r.stderr}`);
      assert.match(out, /--- help\nUsage: os-update-server \[options\] \[command\]/);
      assert.match(out, /--- version\n0\.1\.0\n/);
      const verify = out.slice(out.indexOf("--- verify\n") + 11, out.indexOf("--- done"));
      assert.equal(verify, "", `systemd-analyze verify: ${verify}`);
    },
  );
});
