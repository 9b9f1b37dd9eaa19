/**
 * Sending a byte range of a file (or of an object in a bucket) to one HTTP client, and the limits that
 * bound what all clients together may hold of the server's memory.
 */
import type { ServerResponse } from "node:http";
import { SIZE_CLASSES, type BufferPool } from "./buffer-pool.ts";
import type { RangeReader } from "./store.ts";

export interface StreamLimits {
  /** Streams served at once, over all clients; more get 503. */
  maxStreams: number;
  /** Streams one device (token, or address without auth) may hold at once; more get 429. */
  maxStreamsPerClient: number;
  /** A client that accepts less than `stallBytes` within `stallMs` is dropped. */
  stallMs: number;
  stallBytes: number;
  /** Freed read buffers kept for reuse, at most this many bytes. */
  poolBytes: number;
  /** Buffers bigger than the smallest chunk, out with all streams together, at most this many bytes. */
  bigBufferBytes: number;
}

/** Called when the last stream of a busy spell ends (the server may give memory back then). */
export type IdleHook = () => void;

export const DEFAULT_STREAM_LIMITS: StreamLimits = {
  maxStreams: 512,
  maxStreamsPerClient: 4,
  stallMs: 60_000,
  stallBytes: 16 * 1024,
  poolBytes: 8 * 1024 * 1024,
  bigBufferBytes: 16 * 1024 * 1024,
};

/** The client went away or was dropped: not a server error. */
export class ClientGone extends Error {}

/** A stream whose client takes this much per second (after its first) gets the next bigger chunk. */
const GROW_RATE = 8 * 1024 * 1024;

const STALLED = "dropped: the client took too little within the stall window";

/**
 * Streams a byte range: read into a pooled buffer while the previous chunk
 * is being written, and give a buffer back only once its write completed.
 * Chunks start small and grow while the client keeps up (to 256 KiB), and
 * shrink again when it does not, so a slow reader pins one 16 KiB buffer,
 * not 2 × 256 KiB. A client that accepts less than `stallBytes` per `stallMs`
 * is dropped.
 */
export async function sendRange(
  handle: Pick<RangeReader, "read">,
  offset: number,
  length: number,
  res: ServerResponse,
  pool: BufferPool,
  limits: StreamLimits,
): Promise<void> {
  let sizeClass = 0;
  const streamStart = performance.now();
  let rateStart = streamStart;
  let rateBytes = 0;
  let stalled = false;
  let windowStart = Date.now();
  let windowBytes = 0;
  const stall = setInterval(
    () => {
      if (Date.now() - windowStart < limits.stallMs) return;
      if (windowBytes < limits.stallBytes) {
        stalled = true;
        res.destroy();
      }
      windowStart = Date.now();
      windowBytes = 0;
    },
    Math.max(50, Math.min(1000, limits.stallMs / 4)),
  );
  stall.unref();
  const gone = () => new ClientGone(stalled ? STALLED : "client closed the connection");
  // Waits for one write, or rejects as soon as the client goes. Not a race against one promise
  // that lives as long as the stream: each race leaves a reaction on it that is freed only when
  // it settles, so a long stream kept one per chunk (a slow reader: hundreds, ~150 B each,
  // 50 MiB of heap with 1000 readers). The listener here lives only while its write does.
  const written = (done: Promise<void>) =>
    new Promise<void>((resolve, reject) => {
      if (res.destroyed) return reject(gone());
      const onClose = () => reject(gone());
      res.once("close", onClose);
      done.then(
        () => {
          res.off("close", onClose);
          resolve();
        },
        (error: unknown) => {
          res.off("close", onClose);
          reject(error as Error);
        },
      );
    });
  let pending: { done: Promise<void>; buffer: Buffer; bytes: number; started: number } | undefined;
  // A buffer goes back to the pool once nothing can touch it: after its write's callback.
  // Each buffer is given back exactly once: a buffer in the pool twice would be shared by two streams.
  const settle = async (p: NonNullable<typeof pending>) => {
    await written(p.done).catch((error: unknown) => {
      // A write the client never took: its buffer is free once the write is failed or done.
      void p.done.catch(() => undefined).finally(() => pool.give(p.buffer));
      throw res.destroyed ? gone() : error;
    });
    pool.give(p.buffer);
    // Grow while the client keeps up: by its rate over whole seconds, not by how fast single
    // writes complete. The kernel takes megabytes at memory speed while a socket's buffers fill
    // (the first second, skipped), and again after a slow reader frees some (Linux wakes a writer
    // only when half the send buffer is free): fast takes in a row let 1000 slow readers earn the
    // whole big-buffer ration and pin it. A slow take sends a stream back to the smallest chunk.
    const now = performance.now();
    rateBytes += p.bytes;
    if (now - p.started > 100) {
      sizeClass = 0;
      rateStart = now;
      rateBytes = 0;
    } else if (now - rateStart >= 1000) {
      const fast = rateBytes / ((now - rateStart) / 1000) >= GROW_RATE;
      if (fast && rateStart > streamStart && sizeClass < SIZE_CLASSES.length - 1) sizeClass++;
      rateStart = now;
      rateBytes = 0;
    }
  };
  let position = offset;
  let left = length;
  // Read into a buffer while the previous one is still being written; `reading` is the one not
  // yet handed to the socket, so every exit gives back both.
  let reading: Buffer | undefined;
  try {
    while (left > 0) {
      // Reading ahead of the socket pays only for fast clients; a slow one holds one buffer.
      if (pending && sizeClass === 0) {
        const previous = pending;
        pending = undefined;
        await settle(previous);
      }
      reading = pool.take(SIZE_CLASSES[sizeClass] as number);
      const { bytesRead } = await handle.read(reading, 0, Math.min(reading.length, left), position);
      if (bytesRead === 0) throw new Error(`short read at ${position}`);
      if (pending) {
        const previous = pending;
        pending = undefined;
        await settle(previous);
      }
      const buffer = reading;
      reading = undefined;
      const chunk = buffer.subarray(0, bytesRead);
      const done = new Promise<void>((resolve, reject) =>
        res.write(chunk, (error) => (error ? reject(error) : resolve())),
      );
      done.then(() => (windowBytes += bytesRead)).catch(() => undefined);
      pending = { done, buffer, bytes: bytesRead, started: performance.now() };
      position += bytesRead;
      left -= bytesRead;
    }
    if (pending) {
      const last = pending;
      pending = undefined;
      await settle(last);
    }
    await new Promise<void>((resolve) => res.end(resolve));
  } finally {
    clearInterval(stall);
    if (reading) pool.give(reading);
    // Only when the read itself failed: a write is in flight that nobody settled.
    const last = pending;
    if (last) void last.done.catch(() => undefined).finally(() => pool.give(last.buffer));
  }
}
