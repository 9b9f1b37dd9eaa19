/**
 * Bounds on a download that a socket timeout does not give: a peer that
 * sends one byte every few seconds never idles, yet never finishes. The
 * watchdog ends the stream when less than `minBytes` arrived in a window of
 * `windowMs` (a stall: the caller may resume), when the overall `deadline`
 * passes, or at once when the signal aborts (SIGINT/SIGTERM).
 */
import type { Readable } from "node:stream";
import { EosError } from "../core/errors.ts";

/** A download's bounds, as configured (os-update.yml on a device, on the server for origins). */
export interface TransferLimits {
  /** Less than `stallBytes` within `stallMs` is a stall: drop the connection (and resume, where one can). */
  stallBytes: number;
  stallMs: number;
  /** The whole transfer (every attempt) must be done within this many milliseconds. */
  deadlineMs: number;
}

export const DEFAULT_LIMITS: TransferLimits = {
  stallBytes: 16 * 1024,
  stallMs: 60_000,
  deadlineMs: 6 * 3600_000,
};

/** Limits from the `deadline`, `stall` (seconds) and `stall_bytes` keys of a config, defaults where unset. */
export function limitsFrom(keys: {
  deadline?: number | undefined;
  stall?: number | undefined;
  stall_bytes?: number | undefined;
}): TransferLimits {
  return {
    deadlineMs: keys.deadline === undefined ? DEFAULT_LIMITS.deadlineMs : keys.deadline * 1000,
    stallMs: keys.stall === undefined ? DEFAULT_LIMITS.stallMs : keys.stall * 1000,
    stallBytes: keys.stall_bytes ?? DEFAULT_LIMITS.stallBytes,
  };
}

export interface WatchLimits {
  /** A window with fewer bytes than this is a stall. */
  minBytes: number;
  windowMs: number;
  /** Epoch milliseconds after which the whole transfer has failed. */
  deadline: number;
  signal?: AbortSignal | undefined;
  /** What is being transferred, for messages. */
  what: string;
}

export interface Watch {
  /** Count bytes that arrived. */
  add(n: number): void;
  stop(): void;
}

export function interrupted(what: string): EosError {
  return new EosError("INTERRUPTED", `${what}: stopped by a signal`, { exitCode: 130 });
}

/** Watches `stream` until stop(); ends it with a typed error when a limit is crossed. */
export function watchTransfer(stream: Readable, limits: WatchLimits, now: () => number = Date.now): Watch {
  let windowStart = now();
  let windowBytes = 0;
  const end = (error: EosError) => {
    stop();
    stream.destroy(error);
  };
  const onAbort = () => end(interrupted(limits.what));
  const tick = () => {
    const t = now();
    if (t >= limits.deadline) {
      end(
        new EosError("TIMEOUT", `${limits.what}: not finished by its deadline`, {
          hint: "raise update.deadline in /etc/os-update.yml, or check the link's speed",
        }),
      );
      return;
    }
    if (t - windowStart >= limits.windowMs) {
      if (windowBytes < limits.minBytes) {
        end(
          new EosError(
            "STALLED",
            `${limits.what}: ${windowBytes} bytes in ${Math.round((t - windowStart) / 1000)} s (a stall: less than ${limits.minBytes} bytes per ${limits.windowMs / 1000} s)`,
          ),
        );
        return;
      }
      windowStart = t;
      windowBytes = 0;
    }
  };
  const timer = setInterval(tick, Math.max(50, Math.min(1000, limits.windowMs / 4)));
  timer.unref();
  if (limits.signal?.aborted) queueMicrotask(onAbort);
  else limits.signal?.addEventListener("abort", onAbort, { once: true });
  function stop() {
    clearInterval(timer);
    limits.signal?.removeEventListener("abort", onAbort);
  }
  return { add: (n) => (windowBytes += n), stop };
}

/** watchTransfer for one transfer under a command's limits: its deadline starts now. */
export function watchWithLimits(
  stream: Readable,
  limits: TransferLimits,
  what: string,
  signal: AbortSignal | undefined,
): Watch {
  return watchTransfer(stream, {
    minBytes: limits.stallBytes,
    windowMs: limits.stallMs,
    deadline: Date.now() + limits.deadlineMs,
    signal,
    what,
  });
}
