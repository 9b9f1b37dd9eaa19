import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { atomicWriteFile, removeStaleTemps } from "../../src/io/files.ts";

test("a temp file an earlier boot's process with this pid left is stale, and no obstacle", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "eos-temps-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const target = join(dir, "grubenv");
  await writeFile(target, "old");
  // A boot runs its units in the same order: the commit after a power cut gets the cut one's pid.
  const left = Array.from({ length: 20 }, (_, n) => `.grubenv.tmp-${process.pid}-${n}`);
  for (const name of left) await writeFile(join(dir, name), "half");
  assert.deepEqual((await removeStaleTemps(target)).sort(), [...left].sort());
  for (const name of left) await writeFile(join(dir, name), "half");
  await atomicWriteFile(target, "new");
  assert.equal(await readFile(target, "utf8"), "new");
  assert.equal((await readdir(dir)).length, 1 + left.length);
});
