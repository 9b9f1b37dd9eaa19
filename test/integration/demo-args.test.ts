/**
 * `eos demo`'s arguments are checked before anything is built: a bad one is a
 * usage error that names it (exit 2), with no work directory made.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runEos } from "../helpers/run.ts";

describe("eos demo: arguments", { timeout: 60_000 }, () => {
  const refused = async (args: string[], pattern: RegExp) => {
    const dir = await mkdtemp(join(tmpdir(), "eos-demo-args-"));
    try {
      const work = join(dir, "work");
      const r = await runEos("eos", ["demo", "--work", work, ...args]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, pattern);
      assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
      assert.equal(existsSync(work), false, "nothing made");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  };

  it("refuses a --package that is not a Debian package name (it reaches the image description)", () =>
    refused(["--package", "tree;reboot"], /--package: not a Debian package name: tree;reboot/));

  it("refuses an --arch it cannot build", () => refused(["--arch", "sparc64"], /--arch/));

  it("refuses a --port out of range", () => refused(["--port", "70000"], /--port/));
});
