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
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DELTA_WINDOW } from "../../src/core/update/delta-index.ts";
import { silentLogger } from "../../src/io/log.ts";
import { systemRunner } from "../../src/io/process.ts";
import { deltaFileName, makeDeltas } from "../../src/io/server/deltas.ts";
import { decodeDeltaIndex, MAX_DELTA_BYTES } from "../../src/core/update/delta-index.ts";
import type { Logger } from "../../src/io/log.ts";

import { pseudoRandomBytes } from "../helpers/sample-image.ts";

const MiB = 1024 * 1024;

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

/** Writes OLD and NEW as whole roots in `dir` and makes the server's delta between them. */
async function deltaOf(
  dir: string,
  old: Buffer,
  fresh: Buffer,
  o: { logger: Logger; maxBytes?: number },
): Promise<Buffer> {
  await writeFile(join(dir, "old.root"), old);
  await writeFile(join(dir, "new.root"), fresh);
  const end = (version: string, file: string, bytes: Buffer) => ({
    version,
    rawPath: join(dir, file),
    root: { offset: 0, length: bytes.length },
    sha256: sha(bytes),
  });
  return makeDeltas(systemRunner(), {
    name: "T",
    dir,
    to: end("2", "new.root", fresh),
    from: [end("1", "old.root", old)],
    ...o,
  });
}

test("a delta whose source moved further than the window decodes against a block device", async () => {
  const dir = await mkdtemp(join(tmpdir(), "eos-delta-window-"));
  let loop = "";
  try {
    const half = DELTA_WINDOW + 8 * MiB;
    const old = pseudoRandomBytes("old", 2 * half);
    const moved = Buffer.concat([old.subarray(half), old.subarray(0, half)]);
    // Larger than a device takes (MAX_DELTA_BYTES): kept here to show it decodes.
    await deltaOf(dir, old, moved, { logger: silentLogger(), maxBytes: Infinity });
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

test("a delta larger than a device takes is not kept: the index lists none, the file is gone, the log says why", async () => {
  const dir = await mkdtemp(join(tmpdir(), "eos-delta-max-"));
  try {
    // Unrelated contents: the delta is about as large as the new root, above MAX_DELTA_BYTES.
    const old = pseudoRandomBytes("old", 4 * MiB);
    const fresh = pseudoRandomBytes("new", MAX_DELTA_BYTES + 1 * MiB);
    const logged: Array<{ msg: string; fields: Record<string, unknown> | undefined }> = [];
    const logger: Logger = {
      log: (_level, msg, fields) => logged.push({ msg, fields }),
      info: (msg, fields) => logged.push({ msg, fields }),
      warn: (msg, fields) => logged.push({ msg, fields }),
      error: (msg, fields) => logged.push({ msg, fields }),
    };
    const index = await deltaOf(dir, old, fresh, { logger });
    assert.deepEqual(decodeDeltaIndex(index).deltas, []);
    assert.deepEqual(await readdir(join(dir, "deltas")), []);
    const why = logged.find((l) => l.msg === "delta not kept");
    assert.ok(why, JSON.stringify(logged));
    assert.ok(Number(why.fields?.bytes) > MAX_DELTA_BYTES, JSON.stringify(why));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
