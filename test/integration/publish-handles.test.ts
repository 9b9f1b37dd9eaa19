/**
 * A publish leaves no file open behind it: making v2's delta reads the kept
 * v1's disk image through the store, and that reader must be closed when its
 * stream ends, not left to the garbage collector (Node's DEP0137 warning,
 * seen in `eos demo`, whose host publishes in process and then serves for
 * the whole run). Checked on the process's own descriptors, which a leaked
 * handle keeps open until a collection happens to find it.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readdir, readlink, rm } from "node:fs/promises";
import { join } from "node:path";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { fetchAndPublish } from "../../src/io/server/fetch.ts";
import { PublishedImages } from "../../src/io/server/published.ts";
import { loadTrustedKeys } from "../../src/io/keys.ts";
import { silentLogger } from "../../src/io/log.ts";
import { systemRunner } from "../../src/io/process.ts";
import { DEFAULT_LIMITS } from "../../src/io/watchdog.ts";
import { decodeDeltaIndex } from "../../src/core/update/delta-index.ts";
import { makeWorld, releaseImage, type World } from "../helpers/server-world.ts";

const NAME = "EOS.handles";
const MiB = 1024 * 1024;

/** A full collection now: a handle left to the collector is closed by it, with Node's DEP0137 warning. */
async function collect(): Promise<void> {
  setFlagsFromString("--expose-gc");
  (runInNewContext("gc") as () => void)();
  await new Promise((resolve) => setTimeout(resolve, 200));
}

/** What this process has open under `dir`. */
async function openUnder(dir: string): Promise<string[]> {
  const open: string[] = [];
  for (const fd of await readdir("/proc/self/fd")) {
    const target = await readlink(join("/proc/self/fd", fd)).catch(() => "");
    if (target.startsWith(dir)) open.push(target);
  }
  return open;
}

let world: World;
before(async () => {
  world = await makeWorld();
});
after(async () => {
  await world.origin.close();
  await rm(world.dir, { recursive: true, force: true });
});

test("publishing v2 with a delta from the kept v1 leaves none of the store's files open", async () => {
  // A leaked handle shows either way: still open, or closed by a collection with this warning.
  const leaks: string[] = [];
  const onWarning = (w: Error & { code?: string }) => {
    if (w.code === "DEP0137") leaks.push(w.message);
  };
  process.on("warning", onWarning);
  after(() => void process.off("warning", onWarning));
  const store = new PublishedImages(world.imagesDir);
  const options = {
    trustedKeys: await loadTrustedKeys([join(world.keysDir, "release.pub")]),
    logger: silentLogger(),
    now: () => new Date(),
    proc: systemRunner(),
    limits: DEFAULT_LIMITS,
  };
  const image = { name: NAME, image: `${world.origin.url}/${NAME}.raw.xz` };
  const sample = { payloadBytes: 4 * MiB, rootSizeMiB: 24, seed: "base", verity: true };
  await releaseImage(world, NAME, "1.0.0", sample);
  assert.equal((await fetchAndPublish(store, image, options)).status, "published");
  await releaseImage(world, NAME, "2.0.0", sample);
  assert.equal((await fetchAndPublish(store, image, options)).status, "published");
  const current = await store.current(NAME);
  const deltas = decodeDeltaIndex(current?.deltaIndexBytes as Buffer).deltas;
  assert.deepEqual(
    deltas.map((d) => d.from_version),
    ["1.0.0"],
    "the delta from v1 was made (it reads v1's disk image from the store)",
  );
  const open = await openUnder(world.imagesDir);
  await collect();
  assert.deepEqual(open, []);
  assert.deepEqual(leaks, []);
});
