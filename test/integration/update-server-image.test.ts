/**
 * The update server image's own parts (images/update-server.yaml and
 * images/update-server-files/), checked with the real tools that read them
 * at boot: systemd-analyze for the units and drop-ins, sshd for the fleet's
 * forced command, systemd-sysusers for the fleet user, and the server's own
 * configuration loader for the file the image links to. Booting the image is
 * `npm run bench:update-server` (README), not a CI step.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  chmod,
  copyFile,
  cp,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  symlink,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadDescription } from "../../src/io/image/build.ts";
import { projectServerUnits } from "../../src/io/image/project.ts";
import { osUpdateServerMain } from "../../src/cli/os-update-server.ts";
import { fetchAll } from "../../src/io/server/fetch-all.ts";
import { loadServerConfig } from "../../src/io/server/server-config.ts";
import { captureContext } from "../helpers/context.ts";
import { DIST, REPO, run } from "../helpers/run.ts";

const FILES = join(REPO, "images/update-server-files");
const UNIT_DIR = "usr/lib/systemd/system";

async function scratch(t: { after: (fn: () => Promise<void>) => void }, prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test("the description enables the server's units, and every unit it names exists in the image", async () => {
  const desc = await loadDescription(join(REPO, "images/update-server.yaml"));
  const shipped = await projectServerUnits();
  const own = await readdir(join(FILES, UNIT_DIR));
  const registry = await readdir(join(REPO, "images/files", UNIT_DIR));
  for (const unit of desc.services.enable) {
    if (unit.startsWith("systemd-") || unit === "ssh.service") continue;
    assert.ok(
      shipped.has(unit) || own.includes(unit) || registry.includes(unit),
      `${unit} is not in the image`,
    );
  }
  for (const unit of ["os-update-server.service", "os-fetch.service", "eos-server-storage.service"])
    assert.ok(desc.services.enable.includes(unit), unit);
  assert.deepEqual(desc.files, ["files", "update-server-files"]);
});

test("the server units with the image's drop-ins pass systemd-analyze verify, and order storage first", async (t) => {
  const root = await scratch(t, "eos-server-units-");
  await mkdir(join(root, "usr/bin"), { recursive: true });
  await mkdir(join(root, "etc/systemd/system"), { recursive: true });
  await cp("/usr/lib/systemd/system", join(root, UNIT_DIR), { recursive: true });
  await cp(join(FILES, UNIT_DIR), join(root, UNIT_DIR), { recursive: true });
  await cp(
    join(REPO, "images/files", UNIT_DIR, "registry-rw.service"),
    join(root, UNIT_DIR, "registry-rw.service"),
  );
  for (const [name, text] of await projectServerUnits()) await writeFile(join(root, UNIT_DIR, name), text);
  await copyFile(join(DIST, "os-update-server.mjs"), join(root, "usr/bin/os-update-server"));
  // The tools the units run, as the image has them (verify checks that each is there and executable).
  for (const tool of [
    "mkdir",
    "mountpoint",
    "mount",
    "umount",
    "cp",
    "chmod",
    "mv",
    "openssl",
    "systemd-sysusers",
    "flake-registry",
  ]) {
    await writeFile(join(root, "usr/bin", tool), "#!/bin/sh\n");
    await chmod(join(root, "usr/bin", tool), 0o755);
  }
  const units = [
    "eos-server-storage.service",
    "eos-server-tls.service",
    "os-update-server.service",
    "os-fetch.service",
  ];
  const r = await run(
    "systemd-analyze",
    [`--root=${root}`, "verify", ...units.map((u) => join(UNIT_DIR, u))],
    {
      cwd: root,
    },
  );
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr.trim(), "");

  // The server and the fetcher start only once their state is mounted from the writable partition.
  for (const unit of ["os-update-server.service", "os-fetch.service", "os-update-daemon@.service"]) {
    const dropIn = await readFile(join(FILES, UNIT_DIR, `${unit}.d/eos-update-server.conf`), "utf8");
    assert.match(dropIn, /^Requires=eos-server-storage\.service$/m, unit);
    assert.match(dropIn, /^After=eos-server-storage\.service/m, unit);
  }
  const storage = await readFile(join(FILES, UNIT_DIR, "eos-server-storage.service"), "utf8");
  assert.match(storage, /^Requires=registry-rw\.service$/m);
  // registry-rw.service succeeds without a registry (a device boots without one); a server must not
  // then keep its state on tmpfs: the mount point is checked before anything is bound.
  assert.ok(
    storage.indexOf("ExecStartPre=/usr/bin/mountpoint /var/lib/containers/storage\n") > -1 &&
      storage.indexOf("ExecStartPre=/usr/bin/mountpoint") <
        storage.indexOf("ExecStart=/usr/bin/mount --bind"),
    "the storage unit checks that the registry is mounted first",
  );
  assert.match(
    storage,
    /^ExecStart=\/usr\/bin\/mount --bind \/var\/lib\/containers\/storage\/eos-update-server\/os-images \/srv\/www\/fleet\/os-images$/m,
  );
  // The first boot's configuration never overwrites an operator's.
  assert.match(storage, /^ExecStart=\/usr\/bin\/cp -n /m);
});

test("the first boot's certificate: openssl makes a key and a certificate the server can load", async (t) => {
  const dir = await scratch(t, "eos-server-tls-");
  const unit = await readFile(join(FILES, UNIT_DIR, "eos-server-tls.service"), "utf8");
  const exec = /^ExecStart=\/usr\/bin\/openssl (.+)$/m.exec(unit);
  assert.ok(exec, "the unit runs openssl");
  // The unit's own arguments, with %H (the host name) and the state directory replaced.
  const args = (exec[1] as string)
    .replaceAll("%H", "eos-update")
    .replaceAll("/var/lib/os-update-server/tls", dir)
    .split(" ");
  const r = await run("openssl", args);
  assert.equal(r.code, 0, r.stderr);
  const text = await run("openssl", ["x509", "-in", join(dir, "cert.pem.tmp"), "-noout", "-text"]);
  assert.match(text.stdout.toString(), /DNS:eos-update/);
  assert.match(text.stdout.toString(), /IP Address:10\.0\.2\.15/);
  assert.match(text.stdout.toString(), /prime256v1/);
});

test("sshd applies the fleet's forced command to the fleet user only", async (t) => {
  const dir = await scratch(t, "eos-server-sshd-");
  const key = join(dir, "host_key");
  assert.equal((await run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", key])).code, 0);
  const config = join(dir, "sshd_config");
  // Debian's sshd_config begins with this Include; the drop-in must work under it.
  await writeFile(
    config,
    `Include ${join(FILES, "etc/ssh/sshd_config.d")}/*.conf\nHostKey ${key}\nUsePAM no\nPidFile none\n`,
  );
  const effective = async (user: string) => {
    const r = await run("/usr/sbin/sshd", ["-T", "-f", config, "-C", `user=${user},host=h,addr=10.0.2.2`]);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout.toString();
  };
  const fleet = await effective("fleet");
  assert.match(fleet, /^forcecommand \/usr\/bin\/os-update-server restricted$/m);
  assert.match(fleet, /^authorizedkeysfile \/var\/lib\/os-update-server\/fleet_authorized_keys$/m);
  assert.match(fleet, /^permittty no$/m);
  assert.match(fleet, /^disableforwarding yes$/m);
  const root = await effective("root");
  assert.doesNotMatch(root, /^forcecommand \//m);
  assert.doesNotMatch(root, /^permittty no$/m);
});

test("systemd-sysusers makes the fleet user with a shell sshd can run the forced command with", async (t) => {
  const root = await scratch(t, "eos-server-sysusers-");
  await mkdir(join(root, "etc"), { recursive: true });
  const conf = join(FILES, "usr/lib/sysusers.d/eos-update-server.conf");
  const r = await run("systemd-sysusers", [`--root=${root}`, conf]);
  assert.equal(r.code, 0, r.stderr);
  const passwd = await readFile(join(root, "etc/passwd"), "utf8");
  assert.match(
    passwd,
    /^fleet:x:\d+:\d+:EOS fleet \(os-update over SSH\):\/var\/lib\/os-update-server:\/bin\/sh$/m,
  );
});

test("/etc/os-update-server.yml, where the image links it, wins over the device's /etc/os-update.yml", async (t) => {
  const root = await scratch(t, "eos-server-config-");
  await mkdir(join(root, "etc"), { recursive: true });
  await mkdir(join(root, "var/lib/os-update-server"), { recursive: true });
  // The device's own configuration (the server image updates itself): the map shape.
  await writeFile(
    join(root, "etc/os-update.yml"),
    "update:\n  name: EOS-update\n  url: http://10.0.2.2:8080\n",
  );
  const { ctx } = captureContext({ root });
  // Without the server's file: the original's path, whose shape is the device's, so a clear error.
  await assert.rejects(loadServerConfig(ctx, undefined, true), /os-update\.yml: update: /);

  // The image's link, into the writable partition's state, and the first boot's copy behind it.
  const link = await readlink(join(FILES, "etc/os-update-server.yml"));
  assert.equal(link, "/var/lib/os-update-server/os-update-server.yml");
  await symlink(join(root, link), join(root, "etc/os-update-server.yml"));
  await copyFile(join(FILES, "usr/share/eos/update-server/os-update-server.yml"), join(root, link));
  const { config, path } = await loadServerConfig(ctx, undefined, true);
  assert.equal(path, join(root, "etc/os-update-server.yml"));
  assert.deepEqual(config.update, []);
  assert.equal(config.images_dir, "/srv/www/fleet/os-images");
  assert.equal(config.serve?.port, 443);
  assert.equal(config.serve?.tokens_dir, "/var/lib/os-update-server/tokens");
});

test("a new server image's os-fetch: no images configured yet is not a failure with --timers, and still is without", async (t) => {
  const dir = await scratch(t, "eos-server-empty-");
  const config = join(dir, "os-update-server.yml");
  await copyFile(join(FILES, "usr/share/eos/update-server/os-update-server.yml"), config);
  // os-fetch.service's command line, in process, with systemctl answered by the test.
  const systemctl: string[][] = [];
  const c = captureContext();
  c.ctx.proc = {
    run: async (argv) => {
      systemctl.push(argv);
      const stdout = argv[1] === "list-units" ? "os-update-daemon@Old.timer loaded active waiting x\n" : "";
      return { code: 0, signal: null, stdout, stdoutBytes: Buffer.from(stdout), stderr: "" };
    },
    start: () => {
      throw new Error("not used");
    },
  };
  const fetch = ["fetch", "--oneshot", "--timers", "--config", config, "--images-dir", join(dir, "images")];
  assert.equal(await osUpdateServerMain(fetch, c.ctx), 0, c.stderr());
  assert.match(c.stderr(), /update: lists no images: nothing to fetch/);
  assert.deepEqual(systemctl.at(-1), ["systemctl", "disable", "--now", "os-update-daemon@Old.timer"]);
  // Without --timers, an empty list is still the operator's mistake.
  const plain = captureContext();
  await assert.rejects(osUpdateServerMain(["fetch", "--config", config], plain.ctx), {
    code: "CONFIG",
    message: /update: lists no images/,
  });
  assert.deepEqual(await fetchAll(plain.ctx, { config, emptyOk: true, daemon: false }), []);
  const unit = await readFile(join(REPO, "systemd/os-fetch.service"), "utf8");
  assert.match(unit, /^ExecStart=\/usr\/bin\/os-update-server fetch --oneshot --timers$/m);
});
