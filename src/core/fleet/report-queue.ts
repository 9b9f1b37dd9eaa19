/**
 * The device's report queue as data: what a writer does to it, what a send
 * takes from it. Events reach it two ways: appended under the queue's lock,
 * or, when another process held that lock past the writer's wait, left in
 * a file of their own beside it (the spill) and folded in by whoever holds
 * the lock next. A writer that finds the spill full too appends one byte to
 * a count file (the lost count), again without the lock; the queue
 * remembers how much of that count it has taken in. So an event is either
 * sent, or counted in `dropped`, which reaches the server with the next
 * batch: it never vanishes without a trace.
 */
import type { DeviceEvent } from "./events.ts";

/** Events kept while the server is unreachable; older ones are dropped (and counted) beyond this. */
export const QUEUE_MAX = 64;
/** Events kept beside a queue whose lock was held too long; more would be dropped on merging anyway. */
export const SPILL_MAX = QUEUE_MAX;

export interface ReportQueue {
  events: DeviceEvent[];
  /** Events dropped and not yet reported to the server. */
  dropped: number;
  /** How many bytes of the lost count are already in `dropped`. */
  lostSeen: number;
  /** The server asked for no batch before then (epoch ms; its 429's Retry-After). */
  retryAt?: number;
}

const count = (v: unknown) => (typeof v === "number" && Number.isInteger(v) && v > 0 ? v : 0);

/** The queue file's text; a damaged file is an empty queue (the events are lost, not the update). */
export function parseReportQueue(text: string): ReportQueue {
  try {
    const q = JSON.parse(text) as Partial<ReportQueue>;
    return {
      events: Array.isArray(q.events) ? q.events : [],
      dropped: count(q.dropped),
      lostSeen: count(q.lostSeen),
      ...(count(q.retryAt) > 0 ? { retryAt: count(q.retryAt) } : {}),
    };
  } catch {
    return { events: [], dropped: 0, lostSeen: 0 };
  }
}

function trim(q: ReportQueue): ReportQueue {
  const over = Math.max(0, q.events.length - QUEUE_MAX);
  return over === 0 ? q : { ...q, events: q.events.slice(over), dropped: q.dropped + over };
}

/** The queue with one more event; the oldest goes (counted) when it is full. */
export function appendEvent(q: ReportQueue, event: DeviceEvent): ReportQueue {
  return trim({ ...q, events: [...q.events, event] });
}

/**
 * The queue with the spilled events (oldest first), the spill files that
 * held none (damaged) and the lost count folded in. An event already queued
 * (a merge that was cut short before it removed its spill files) is not
 * queued twice.
 */
export function absorbSpill(
  q: ReportQueue,
  spilled: { events: readonly DeviceEvent[]; damaged: number },
  lostBytes: number,
): ReportQueue {
  const ids = new Set(q.events.map((e) => e.id));
  const fresh = spilled.events.filter((e) => !ids.has(e.id));
  // A count file shorter than what was taken in was removed and began again: all of it is new.
  const lost = lostBytes >= q.lostSeen ? lostBytes - q.lostSeen : lostBytes;
  return trim({
    ...q,
    events: [...q.events, ...fresh],
    dropped: q.dropped + lost + spilled.damaged,
    lostSeen: lostBytes,
  });
}

/** The queue once the server has taken a batch: its events, and the drops it was told of. */
export function removeSent(q: ReportQueue, sentIds: ReadonlySet<string>, sentDropped: number): ReportQueue {
  const { retryAt: _taken, ...rest } = q;
  return {
    ...rest,
    events: q.events.filter((e) => !sentIds.has(e.id)),
    dropped: Math.max(0, q.dropped - sentDropped),
  };
}

/** The longest wait a server's Retry-After can impose: a wrong or hostile value must not silence a device. */
export const MAX_RETRY_AFTER_MS = 3600_000;

/**
 * When a 429's Retry-After (seconds, or an HTTP date) lets the device send
 * again, at most MAX_RETRY_AFTER_MS on; undefined when the header says
 * nothing usable (the next run tries again, as for any other refusal).
 */
export function retryAfterAt(header: string | undefined, nowMs: number): number | undefined {
  if (header === undefined) return undefined;
  const text = header.trim();
  const at = /^\d+$/.test(text) ? nowMs + Number(text) * 1000 : Date.parse(text);
  if (!Number.isFinite(at) || at <= nowMs) return undefined;
  return Math.min(at, nowMs + MAX_RETRY_AFTER_MS);
}
