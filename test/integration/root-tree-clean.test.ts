/**
 * The root tree's last clean-up on a temporary tree: what differs per build
 * and what no device runs go, the runtime beside them stays.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { removeVolatile, stampUpdated } from "../../src/io/image/rootfs.ts";

test("the clean-up drops podman's test helper and per-build files, and keeps podman's runtime", async () => {
  const tree = await mkdtemp(join(tmpdir(), "eos-clean-"));
  try {
    const files = [
      "usr/libexec/podman/podman-testing",
      "usr/libexec/podman/quadlet",
      "usr/libexec/podman/rootlessport",
      "etc/ssh/ssh_host_ed25519_key",
      "etc/ssh/sshd_config",
    ];
    for (const f of files) {
      await mkdir(join(tree, f, ".."), { recursive: true });
      await writeFile(join(tree, f), "x");
    }
    await removeVolatile(tree);
    assert.deepEqual((await readdir(join(tree, "usr/libexec/podman"))).sort(), ["quadlet", "rootlessport"]);
    assert.deepEqual(await readdir(join(tree, "etc/ssh")), ["sshd_config"]);
  } finally {
    await rm(tree, { recursive: true, force: true });
  }
});

test("a root with ldconfig.service (trixie) gets systemd's update stamps at the build's time; one without gets none", async () => {
  const tree = await mkdtemp(join(tmpdir(), "eos-stamp-"));
  try {
    for (const d of ["etc", "var", "usr/lib/systemd/system"]) await mkdir(join(tree, d), { recursive: true });
    assert.equal(await stampUpdated(tree, 1754697600), false);
    assert.deepEqual(await readdir(join(tree, "etc")), []);
    await writeFile(join(tree, "usr/lib/systemd/system/ldconfig.service"), "[Unit]\n");
    assert.equal(await stampUpdated(tree, 1754697600), true);
    for (const d of ["etc", "var"])
      assert.match(
        await readFile(join(tree, d, ".updated"), "utf8"),
        /^TIMESTAMP_NSEC=1754697600000000000$/m,
      );
  } finally {
    await rm(tree, { recursive: true, force: true });
  }
});
