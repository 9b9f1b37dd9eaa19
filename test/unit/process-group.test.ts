import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { systemRunner } from "../../src/io/process.ts";

/** Running, not a zombie left for init to reap (this machine's init may take its time). */
function running(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

/** A tool that forks a worker and waits for it, as mmdebstrap does with apt and dpkg. */
async function abortForkingTool(group: boolean): Promise<{ worker: number; error: unknown }> {
  const dir = mkdtempSync(join(tmpdir(), "eos-pg-"));
  try {
    const pidFile = join(dir, "worker.pid");
    const abort = new AbortController();
    const run = systemRunner()
      .run(["sh", "-c", 'sleep 300 & echo $! > "$1"; wait', "sh", pidFile], { signal: abort.signal, group })
      .then(
        () => undefined,
        (error: unknown) => error,
      );
    for (let i = 0; i < 100 && !existsSync(pidFile); i++) await sleep(50);
    const worker = Number(readFileSync(pidFile, "utf8").trim());
    abort.abort();
    // Bounded: a run that waits for a worker nobody stopped would hang here.
    const error = await Promise.race([run, sleep(20_000, new Error("the run did not return within 20 s"))]);
    return { worker, error };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("a run in its own group: an abort stops the tool's workers too, before the run returns", async () => {
  const { worker, error } = await abortForkingTool(true);
  try {
    assert.equal((error as { code?: string }).code, "INTERRUPTED", String(error));
    assert.equal(running(worker), false, "the worker the tool forked is gone");
  } finally {
    if (running(worker)) process.kill(worker, "SIGKILL");
  }
});

test("without a group an abort stops only the tool: its worker is left (why mmdebstrap needs one)", async () => {
  const { worker, error } = await abortForkingTool(false);
  try {
    assert.equal((error as { code?: string }).code, "INTERRUPTED");
    assert.equal(running(worker), true);
  } finally {
    if (running(worker)) process.kill(worker, "SIGKILL");
  }
});
