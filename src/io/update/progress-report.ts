/**
 * `download_progress` reports during an apply: bytes done and the total, at
 * most once per interval (10 s unless the caller says otherwise). The
 * download never waits on a report: while one is still being queued the
 * next is skipped, so a slow or full disk costs reports, never throughput.
 */
import type { Progress } from "../progress.ts";
import type { UpdateEvents } from "./reporter.ts";

export const PROGRESS_REPORT_MS = 10_000;

export interface ProgressReports {
  /** Wraps a download's progress so that its bytes are reported too. */
  track(inner: Progress, total: number): Progress;
  /** Waits for a report still being queued (so the next event comes after it). */
  settle(): Promise<void>;
}

export function progressReports(
  events: UpdateEvents | undefined,
  version: string,
  o: { everyMs?: number | undefined; now: () => Date },
): ProgressReports {
  const every = o.everyMs ?? PROGRESS_REPORT_MS;
  let last = o.now().getTime();
  let pending: Promise<void> | undefined;
  return {
    track(inner, total) {
      if (!events) return inner;
      let bytes = 0;
      return {
        add(n) {
          inner.add(n);
          // A retried range counts its bytes again: never report more than there is.
          bytes = Math.min(total, bytes + n);
          const t = o.now().getTime();
          if (pending || t - last < every) return;
          last = t;
          pending = events
            .note({ type: "download_progress", version, bytes, total })
            .finally(() => (pending = undefined));
        },
        done: () => inner.done(),
      };
    },
    async settle() {
      await pending;
    },
  };
}
