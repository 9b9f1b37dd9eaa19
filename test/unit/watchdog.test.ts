import { test } from "node:test";
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { watchTransfer } from "../../src/io/watchdog.ts";

/** Feeds `bytesPerTick` every `tickMs` until the stream ends; resolves with the stream's error (or undefined). */
function run(
  limits: { minBytes: number; windowMs: number; deadlineMs: number; signal?: AbortSignal },
  feed: { bytesPerTick: number; tickMs: number; forMs: number },
) {
  const stream = new PassThrough();
  const watch = watchTransfer(stream, { ...limits, deadline: Date.now() + limits.deadlineMs, what: "test" });
  const started = Date.now();
  const timer = setInterval(() => {
    if (Date.now() - started >= feed.forMs) {
      clearInterval(timer);
      stream.end();
      return;
    }
    if (!stream.destroyed) stream.write(Buffer.alloc(feed.bytesPerTick));
  }, feed.tickMs);
  stream.on("data", (c: Buffer) => watch.add(c.length));
  return new Promise<Error | undefined>((resolve) => {
    stream.once("error", (e) => {
      clearInterval(timer);
      watch.stop();
      resolve(e);
    });
    stream.once("end", () => {
      watch.stop();
      resolve(undefined);
    });
  });
}

test("a transfer that keeps its rate is left alone", async () => {
  const error = await run(
    { minBytes: 100, windowMs: 200, deadlineMs: 10_000 },
    { bytesPerTick: 100, tickMs: 20, forMs: 900 },
  );
  assert.equal(error, undefined);
});

test("less than minBytes in a window is a stall", async () => {
  const error = await run(
    { minBytes: 1000, windowMs: 200, deadlineMs: 10_000 },
    { bytesPerTick: 10, tickMs: 20, forMs: 5000 },
  );
  assert.equal((error as { code?: string }).code, "STALLED");
  assert.match(String(error?.message), /a stall: less than 1000 bytes per 0\.2 s/);
});

test("the deadline ends a transfer that never stalls", async () => {
  const t = Date.now();
  const error = await run(
    { minBytes: 1, windowMs: 10_000, deadlineMs: 300 },
    { bytesPerTick: 10, tickMs: 20, forMs: 5000 },
  );
  assert.equal((error as { code?: string }).code, "TIMEOUT");
  assert.ok(Date.now() - t < 1500);
});

test("an abort ends it at once, as INTERRUPTED with exit code 130", async () => {
  const controller = new AbortController();
  setTimeout(() => controller.abort(), 100);
  const t = Date.now();
  const error = await run(
    { minBytes: 1, windowMs: 10_000, deadlineMs: 10_000, signal: controller.signal },
    { bytesPerTick: 10, tickMs: 20, forMs: 5000 },
  );
  assert.equal((error as { code?: string }).code, "INTERRUPTED");
  assert.equal((error as { exitCode?: number }).exitCode, 130);
  assert.ok(Date.now() - t < 500);
});
