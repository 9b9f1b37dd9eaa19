/**
 * A delta made by the server must decode on a device, whose old root is a
 * block device: xdelta3 cannot seek back in it beyond its window, so the
 * server may only refer to the old root within that same window. Here half
 * of the root moves by more than the window (as a large package inserted
 * early would move it); the delta must still decode against a loop device.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { spawnSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DELTA_WINDOW } from "../../src/core/update/delta-index.ts";
import { silentLogger } from "../../src/io/log.ts";
import { systemRunner } from "../../src/io/process.ts";
import { deltaFileName, makeDeltas } from "../../src/io/server/deltas.ts";

import { pseudoRandomBytes } from "../helpers/sample-image.ts";

const MiB = 1024 * 1024;

test("a delta whose source moved further than the window decodes against a block device", async () => {
  const dir = await mkdtemp(join(tmpdir(), "eos-delta-window-"));
  let loop = "";
  try {
    const half = DELTA_WINDOW + 8 * MiB;
    const old = pseudoRandomBytes("old", 2 * half);
    const moved = Buffer.concat([old.subarray(half), old.subarray(0, half)]);
    await writeFile(join(dir, "old.root"), old);
    await writeFile(join(dir, "new.root"), moved);
    const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
    await makeDeltas(systemRunner(), {
      name: "T",
      dir,
      to: {
        version: "2",
        rawPath: join(dir, "new.root"),
        root: { offset: 0, length: moved.length },
        sha256: sha(moved),
      },
      from: [
        {
          version: "1",
          rawPath: join(dir, "old.root"),
          root: { offset: 0, length: old.length },
          sha256: sha(old),
        },
      ],
      logger: silentLogger(),
    });
    loop = spawnSync("losetup", ["--find", "--show", "--read-only", join(dir, "old.root")])
      .stdout.toString()
      .trim();
    assert.match(loop, /^\/dev\/loop\d+$/);
    // As the device runs it (io/update/delta-apply.ts).
    const r = spawnSync(
      "xdelta3",
      ["-d", "-c", "-B", String(DELTA_WINDOW), "-s", loop, join(dir, "deltas", deltaFileName(sha(old)))],
      { maxBuffer: 4 * half },
    );
    assert.equal(r.status, 0, r.stderr.toString());
    assert.equal(sha(r.stdout), sha(moved));
  } finally {
    if (loop) spawnSync("losetup", ["--detach", loop]);
    await rm(dir, { recursive: true, force: true });
  }
});
