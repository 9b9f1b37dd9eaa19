import { test } from "node:test";
import assert from "node:assert/strict";
import { cp, copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DIST, REPO, run, runEos } from "../helpers/run.ts";

const UNITS = join(REPO, "systemd");

/** Every unit the repository ships: a unit that goes missing (or appears untested) fails here. */
const SHIPPED_UNITS = [
  "eos-ec2-init.service",
  "os-fetch.service",
  "os-update-daemon@.service",
  "os-update-daemon@.timer",
  "os-update-fetchd.service",
  "os-update-server.service",
  "update_commit.service",
];
/** The units whose ExecStart runs os-update-server. */
const SERVER_EXEC_UNITS = [
  "os-fetch.service",
  "os-update-daemon@.service",
  "os-update-fetchd.service",
  "os-update-server.service",
];

/** A throwaway root with the system's own units, so systemd-analyze can resolve dependencies. */
async function unitRoot(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), "eos-units-"));
  await mkdir(join(root, "usr/bin"), { recursive: true });
  await mkdir(join(root, "usr/lib/systemd"), { recursive: true });
  await mkdir(join(root, "etc/systemd/system"), { recursive: true });
  await cp("/usr/lib/systemd/system", join(root, "usr/lib/systemd/system"), { recursive: true });
  await copyFile(join(DIST, "os-update-server.mjs"), join(root, "usr/bin/os-update-server"));
  await copyFile(join(DIST, "os-update.mjs"), join(root, "usr/bin/os-update"));
  await copyFile(join(DIST, "eos-ec2-init.mjs"), join(root, "usr/bin/eos-ec2-init"));
  return root;
}

test("the shipped units pass systemd-analyze verify", async (t) => {
  const root = await unitRoot();
  t.after(() => rm(root, { recursive: true, force: true }));
  const units = (await readdir(UNITS)).sort();
  assert.deepEqual(units, SHIPPED_UNITS);
  assert.equal(units.length, 7);
  const args: string[] = [];
  for (const unit of units) {
    await copyFile(join(UNITS, unit), join(root, "etc/systemd/system", unit));
    args.push(join("etc/systemd/system", unit.replace("@.", "@EOS.x86_64.")));
  }
  assert.equal(args.length, SHIPPED_UNITS.length, "every shipped unit is verified");
  const r = await run("systemd-analyze", [`--root=${root}`, "verify", ...args], { cwd: root });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr.trim(), "");

  // The checker does catch mistakes, so the pass above means something.
  await writeFile(
    join(root, "etc/systemd/system/broken.service"),
    "[Service]\nExecStart=/usr/bin/os-update-server fetch\nBogusKey=1\n",
  );
  const broken = await run(
    "systemd-analyze",
    [`--root=${root}`, "verify", "etc/systemd/system/broken.service"],
    { cwd: root },
  );
  assert.match(broken.stderr, /BogusKey/);
});

test("update_commit.service runs once the system is up on every boot (commit a trial, confirm a normal boot)", async () => {
  const text = await readFile(join(UNITS, "update_commit.service"), "utf8");
  // GRUB counts boots of the committed slot until one is confirmed: the unit must run on every boot.
  assert.doesNotMatch(text, /^Condition/m);
  assert.match(text, /^After=multi-user.target$/m);
  assert.match(text, /^RequiresMountsFor=\/boot\/efi$/m);
  assert.match(text, /^ExecStart=\/usr\/bin\/os-update --commit$/m);
});

test("every ExecStart in the server units is a command line the server accepts", async () => {
  const checked: string[] = [];
  for (const unit of (await readdir(UNITS))
    .filter((u) => u.endsWith(".service") && u.startsWith("os-"))
    .sort()) {
    const text = await readFile(join(UNITS, unit), "utf8");
    const exec = /^ExecStart=\/usr\/bin\/os-update-server (.+)$/m.exec(text);
    if (!exec) continue;
    checked.push(unit);
    const args = (exec[1] as string).replace("%i", "EOS").split(" ");
    // Point at a config that does not exist: a usage error would exit 2, a config error exits 3.
    const r = await runEos("os-update-server", [...args, "--config", "/nonexistent/os-update.yml"]);
    assert.equal(r.code, 3, `${unit}: ${r.stderr}`);
    assert.match(r.stderr, /nonexistent\/os-update.yml/);
  }
  assert.deepEqual(checked, SERVER_EXEC_UNITS);
  assert.equal(checked.length, 4);
});
