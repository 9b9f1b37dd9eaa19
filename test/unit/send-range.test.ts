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

/** A response whose writes complete a turn later; `onWrite` sees the count of writes so far. */
function fakeResponse(onWrite: (writes: number) => void): ServerResponse & { bytes: number } {
  const res = Object.assign(new EventEmitter(), {
    bytes: 0,
    writes: 0,
    destroyed: false,
    writableFinished: false,
    write(chunk: Buffer, callback: (error?: Error) => void) {
      res.bytes += chunk.length;
      onWrite(++res.writes);
      setImmediate(callback);
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
  return res as unknown as ServerResponse & { bytes: number };
}

test("a long stream holds the same heap at its end as near its start (nothing kept per chunk)", async () => {
  const chunks = 20_000;
  const chunk = SIZE_CLASSES[0];
  let early = 0;
  let late = 0;
  const res = fakeResponse((writes) => {
    if (writes === 500) early = heapAfterGc();
    if (writes === chunks - 10) late = heapAfterGc();
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
  const res = fakeResponse((writes) => {
    if (writes === 3) res.destroy();
  });
  const pool = new CountingPool(1024 * 1024, 0);
  await assert.rejects(
    sendRange(zeros, 0, 100 * chunk, res, pool, DEFAULT_STREAM_LIMITS),
    (error: Error) => error.constructor.name === "ClientGone",
  );
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(pool.out, 0);
});
