/**
 * The delta decode's progress: xdelta3 writes the slot through a descriptor
 * it shares with os-update, so os-update follows the decode by that
 * descriptor's offset (delta-apply.ts watchWrittenOffset). Here a child
 * writes through our descriptor in two steps, as the decoder does window by
 * window; test/integration/delta.test.ts checks the lines an apply prints.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { watchWrittenOffset } from "../../src/io/update/delta-apply.ts";

test("a child's writes through our descriptor are seen while it runs, and in full when it ends", async () => {
  const dir = await mkdtemp(join(tmpdir(), "eos-offset-"));
  const out = await open(join(dir, "slot"), "w+");
  try {
    const seen: number[] = [];
    const stop = watchWrittenOffset(out.fd, (offset) => seen.push(offset), 20);
    // The child writes 3 bytes, waits for us to see them, then 4 more.
    const script = `process.stdout.write("abc"); setTimeout(() => process.stdout.write("defg"), 1000);`;
    const child = spawn(process.execPath, ["-e", script], { stdio: ["ignore", out.fd, "inherit"] });
    await new Promise((resolve) => child.on("exit", resolve));
    await stop();
    assert.ok(seen.includes(3), `the first write was seen before the child ended: ${seen.join(",")}`);
    assert.equal(seen.at(-1), 7);
    assert.deepEqual(
      seen,
      [...seen].sort((a, b) => a - b),
      "the offset only grows",
    );
  } finally {
    await out.close();
    await rm(dir, { recursive: true, force: true });
  }
});
