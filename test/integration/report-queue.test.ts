/**
 * The device's report queue with two writers at once: the boot unit's
 * report and a manual os-update are separate processes appending to the
 * same file. Two real processes each queue 30 events at the same moment;
 * every one of the 60 must be in the queue afterwards. A process that holds
 * the queue's lock too long costs a writer no event: it is kept beside the
 * queue and taken in, in order, by the next writer that gets the lock.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO, run } from "../helpers/run.ts";

const EACH = 30;

test("two processes queueing reports at once lose none of them", async () => {
  const root = await mkdtemp(join(tmpdir(), "eos-queue-"));
  try {
    await mkdir(join(root, "etc"), { recursive: true });
    // Nothing listens on port 1: the events stay queued.
    await writeFile(join(root, "etc/os-update.yml"), "update:\n  name: EOS\n  url: http://127.0.0.1:1\n");
    const writer = (who: string) =>
      run(
        process.execPath,
        ["--import", "tsx", join(REPO, "test/helpers/queue-writer.ts"), root, who, String(EACH)],
        {
          cwd: REPO,
        },
      );
    const writers = [writer("a"), writer("b")];
    const deadline = Date.now() + 60_000;
    while (
      !(await stat(join(root, "ready-a")).catch(() => undefined)) ||
      !(await stat(join(root, "ready-b")).catch(() => undefined))
    ) {
      assert.ok(Date.now() < deadline, "the writers did not start");
      await new Promise((r) => setTimeout(r, 20));
    }
    await writeFile(join(root, "go"), "");
    for (const r of await Promise.all(writers)) assert.equal(r.code, 0, r.stderr);
    const queue = JSON.parse(await readFile(join(root, "run/eos/reports.json"), "utf8")) as {
      events: Array<{ version: string }>;
      drops: number;
    };
    const versions = queue.events.map((e) => e.version);
    const want = ["a", "b"].flatMap((who) => Array.from({ length: EACH }, (_, i) => `${who}.${i}`));
    assert.deepEqual([...versions].sort(), [...want].sort(), `${versions.length} of ${want.length} kept`);
    assert.equal(queue.drops, 0);
    for (const who of ["a", "b"]) {
      const mine = versions.filter((v) => v.startsWith(`${who}.`));
      assert.deepEqual(
        mine,
        want.filter((v) => v.startsWith(`${who}.`)),
        "each writer's events in its order",
      );
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test("events that cannot get the queue's lock are kept beside it, then taken into the queue in order", async () => {
  const root = await mkdtemp(join(tmpdir(), "eos-queue-"));
  try {
    await mkdir(join(root, "etc"), { recursive: true });
    await writeFile(join(root, "etc/os-update.yml"), "update:\n  name: EOS\n  url: http://127.0.0.1:1\n");
    await writeFile(join(root, "go"), "");
    const queue = join(root, "run/eos/reports.json");
    const writer = async (who: string, count: number) => {
      const r = await run(
        process.execPath,
        ["--import", "tsx", join(REPO, "test/helpers/queue-writer.ts"), root, who, String(count)],
        { cwd: REPO },
      );
      assert.equal(r.code, 0, r.stderr);
    };
    // This test's process is alive and is not the writer: the lock stays held for the whole write.
    await mkdir(join(root, "run/eos"), { recursive: true });
    await writeFile(`${queue}.lock`, `${process.pid}\n`);
    await writer("a", 5);
    assert.equal(await stat(queue).catch(() => undefined), undefined, "the queue itself was never written");
    assert.equal((await readdir(`${queue}.spill`)).filter((n) => n.endsWith(".json")).length, 5);

    await rm(`${queue}.lock`);
    await writer("b", 1);
    const q = JSON.parse(await readFile(queue, "utf8")) as {
      events: Array<{ version: string }>;
      drops: number;
    };
    assert.deepEqual(
      q.events.map((e) => e.version),
      ["a.0", "a.1", "a.2", "a.3", "a.4", "b.0"],
    );
    assert.equal(q.drops, 0);
    assert.deepEqual(await readdir(`${queue}.spill`), [], "taken in, so no longer beside it");
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});
