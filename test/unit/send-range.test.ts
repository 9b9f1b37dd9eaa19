import { test } from "node:test";
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import type { FileHandle } from "node:fs/promises";
import type { ServerResponse } from "node:http";
import v8 from "node:v8";
import vm from "node:vm";
import { BufferPool, SIZE_CLASSES } from "../../src/io/server/buffer-pool.ts";
import { DEFAULT_STREAM_LIMITS, sendRange } from "../../src/io/server/send-range.ts";

v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc") as () => void;

function heapAfterGc(): number {
  gc();
  gc();
  return v8.getHeapStatistics().used_heap_size;
}

/** A file that is only zeros, read without touching a disk. */
const zeros = {
  read: (buffer: Buffer, _offset: number, length: number) => {
    buffer.fill(0, 0, length);
    return Promise.resolve({ bytesRead: length, buffer });
  },
} as unknown as FileHandle;

/**
 * A response that takes every write: it counts them and their bytes, keeps the
 * largest chunk, calls `onWrite` with the write's number and completes it after
 * `delayMs(n)` ms (0: on the next turn).
 */
function fakeResponse(
  o: { onWrite?: (writes: number) => void; delayMs?: (writes: number) => number } = {},
): ServerResponse & { bytes: number; largest: number } {
  const res = Object.assign(new EventEmitter(), {
    bytes: 0,
    writes: 0,
    largest: 0,
    destroyed: false,
    writableFinished: false,
    write(chunk: Buffer, callback: (error?: Error) => void) {
      res.bytes += chunk.length;
      res.largest = Math.max(res.largest, chunk.length);
      // Counted apart from the hook: an optional call skips evaluating its arguments.
      res.writes++;
      o.onWrite?.(res.writes);
      const ms = o.delayMs?.(res.writes) ?? 0;
      if (ms > 0) setTimeout(callback, ms);
      else setImmediate(callback);
      return true;
    },
    end(callback: () => void) {
      res.writableFinished = true;
      setImmediate(callback);
    },
    destroy() {
      res.destroyed = true;
      setImmediate(() => res.emit("close"));
    },
  });
  return res as unknown as ServerResponse & { bytes: number; largest: number };
}

test("a long stream holds the same heap at its end as near its start (nothing kept per chunk)", async () => {
  const chunks = 20_000;
  const chunk = SIZE_CLASSES[0];
  let early = 0;
  let late = 0;
  const res = fakeResponse({
    onWrite: (writes) => {
      if (writes === 500) early = heapAfterGc();
      if (writes === chunks - 10) late = heapAfterGc();
    },
  });
  // A big-buffer ration of 0 keeps every chunk at the smallest size: one chunk per write.
  const pool = new BufferPool(1024 * 1024, 0);
  await sendRange(zeros, 0, chunks * chunk, res, pool, DEFAULT_STREAM_LIMITS);
  assert.equal(res.bytes, chunks * chunk);
  // Before the fix each chunk left a promise reaction (~150 B) alive until the stream ended: 3 MiB here.
  const grown = late - early;
  assert.ok(grown < 512 * 1024, `heap grew by ${Math.round(grown / 1024)} KiB over ${chunks} chunks`);
});

/** Counts buffers out with streams. */
class CountingPool extends BufferPool {
  out = 0;
  override take(size: number): Buffer {
    this.out++;
    return super.take(size);
  }
  override give(buffer: Buffer): void {
    this.out--;
    super.give(buffer);
  }
}

test("a client that goes away mid-stream ends the stream with ClientGone, every buffer given back once", async () => {
  const chunk = SIZE_CLASSES[0];
  const res = fakeResponse({
    onWrite: (writes) => {
      if (writes === 3) res.destroy();
    },
  });
  const pool = new CountingPool(1024 * 1024, 0);
  await assert.rejects(
    sendRange(zeros, 0, 100 * chunk, res, pool, DEFAULT_STREAM_LIMITS),
    (error: Error) => error.constructor.name === "ClientGone",
  );
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(pool.out, 0);
});

test("a slow reader whose writes complete in fast bursts keeps the smallest chunk", async () => {
  // 32 chunks at memory speed, then a 200 ms wait (as when Linux wakes a writer once half its
  // send buffer is free): 2.5 MiB/s in all. Judged by single takes, it looked fast and grew.
  const res = fakeResponse({ delayMs: (n) => (n % 32 === 0 ? 200 : 0) });
  const pool = new BufferPool(1024 * 1024, 16 * 1024 * 1024);
  await sendRange(zeros, 0, 8 * 1024 * 1024, res, pool, DEFAULT_STREAM_LIMITS);
  assert.equal(res.largest, SIZE_CLASSES[0]);
  assert.equal(pool.bigInUse, 0);
});

test("a client that keeps up gets bigger chunks after its first second", async () => {
  const res = fakeResponse();
  const pool = new BufferPool(1024 * 1024, 16 * 1024 * 1024);
  const stream = sendRange(zeros, 0, 4 * 1024 ** 3, res, pool, DEFAULT_STREAM_LIMITS);
  const started = performance.now();
  while (res.largest <= SIZE_CLASSES[0] && performance.now() - started < 5000)
    await new Promise((r) => setTimeout(r, 50));
  res.destroy();
  await assert.rejects(stream);
  assert.ok(res.largest > SIZE_CLASSES[0], "still at the smallest chunk after 5 s");
  assert.ok(performance.now() - started >= 1000, "grew within its first second");
});
