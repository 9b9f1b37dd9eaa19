/**
 * The device's report queue as data: what a writer does to it, what a send
 * takes from it. Events reach it two ways: appended under the queue's lock,
 * or, when another process held that lock past the writer's wait, left in
 * a file of their own beside it (the spill) and folded in by whoever holds
 * the lock next. A writer that finds the spill full too appends one byte to
 * a count file (the lost count), again without the lock; the queue
 * remembers how much of that count it has taken in. So an event is either
 * sent, or counted in `drops`: it never vanishes without a trace.
 *
 * `drops` is the queue's total since it was made, never lowered, sent with
 * the queue's id (made by the first writer: a /run queue is new each boot,
 * a damaged file starts a new one). Two processes that send the same queue
 * at once send the same total, and the server adds only what it has not
 * seen of that queue's total: drops are idempotent like the events' ids.
 * A count of drops "not yet reported", taken down after each send, was
 * reported twice when two sends read it before either took it down.
 *
 * A send that cannot take the lock afterwards to remove what it delivered
 * leaves a receipt beside the queue instead (again a file of its own), which
 * the next writer applies once: otherwise the delivered events would stay
 * queued, and be dropped (and counted) when the queue fills.
 */
import {
  MAX_DROPS_TOTAL,
  MAX_EVENTS_PER_BATCH,
  STATE_EVENTS,
  type DeviceEvent,
  type Drops,
} from "./events.ts";

/** Events kept while the server is unreachable; older ones are dropped (and counted) beyond this. */
export const QUEUE_MAX = 64;
/** Events kept beside a queue whose lock was held too long; more would be dropped on merging anyway. */
export const SPILL_MAX = QUEUE_MAX;

export interface ReportQueue {
  events: DeviceEvent[];
  /** Made by the writer that first writes the queue (reporter.ts); the server keeps a total per id. */
  id?: string;
  /** Events this queue has dropped since it was made: it only grows (a receipt from before totals aside). */
  drops: number;
  /** How many bytes of the lost count are already in `drops`. */
  lostSeen: number;
  /** The server asked for no batch before then (epoch ms; its 429's Retry-After). */
  retryAt?: number;
  /** Receipts taken in whose files may not be removed yet: a crash between the two must not apply one twice. */
  applied?: string[];
}

/** What the server took of a batch: its events. */
export interface SendReceipt {
  ids: string[];
  /**
   * A receipt that an os-update from before drop totals left (it reported a
   * count of drops, then took it out of the queue): applied as it was then,
   * so that what it reported is not counted again in the total.
   */
  before?: { dropped: number; lostFrom: number; lostTo: number };
}

/** A receipt file's name (unique per send) and what it says; undefined when it is damaged. */
export interface NamedReceipt {
  name: string;
  receipt: SendReceipt | undefined;
}

const count = (v: unknown) => (typeof v === "number" && Number.isInteger(v) && v > 0 ? v : 0);

/** A queue id as the server takes it (core/fleet/events.ts). */
export const QUEUE_ID = /^[A-Za-z0-9_-]{8,64}$/;

/**
 * The queue file's text; a damaged file is an empty queue with no id (the
 * events are lost, not the update; its writer makes a new id). A file from
 * before drop totals has no id either: its `dropped`, the drops it had not
 * reported yet, start the total of the id it is given.
 */
export function parseReportQueue(text: string): ReportQueue {
  try {
    const q = JSON.parse(text) as Partial<ReportQueue> & { dropped?: unknown };
    const id = typeof q.id === "string" && QUEUE_ID.test(q.id) ? q.id : undefined;
    return {
      events: Array.isArray(q.events) ? q.events : [],
      ...(id === undefined ? { drops: count(q.dropped) } : { id, drops: count(q.drops) }),
      lostSeen: count(q.lostSeen),
      ...(count(q.retryAt) > 0 ? { retryAt: count(q.retryAt) } : {}),
      ...(Array.isArray(q.applied) ? { applied: q.applied.filter((n) => typeof n === "string") } : {}),
    };
  } catch {
    return { events: [], drops: 0, lostSeen: 0 };
  }
}

/** The lost count's bytes the queue has not taken in; a count file shorter than that began again. */
const lostSince = (q: ReportQueue, lostBytes: number) =>
  lostBytes >= q.lostSeen ? lostBytes - q.lostSeen : lostBytes;

function trim(q: ReportQueue): ReportQueue {
  const over = Math.max(0, q.events.length - QUEUE_MAX);
  return over === 0 ? q : { ...q, events: q.events.slice(over), drops: q.drops + over };
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
  return trim({
    ...q,
    events: [...q.events, ...fresh],
    drops: q.drops + lostSince(q, lostBytes) + spilled.damaged,
    lostSeen: lostBytes,
  });
}

/** A receipt file's text; undefined when it is damaged (its events are sent again, and stored once). */
export function parseReceipt(text: string): SendReceipt | undefined {
  try {
    const r = JSON.parse(text) as Partial<SendReceipt> & {
      dropped?: unknown;
      lostFrom?: unknown;
      lostTo?: unknown;
    };
    if (!Array.isArray(r.ids) || !r.ids.every((id) => typeof id === "string")) return undefined;
    if (r.dropped === undefined && r.lostTo === undefined) return { ids: r.ids };
    return {
      ids: r.ids,
      before: { dropped: count(r.dropped), lostFrom: count(r.lostFrom), lostTo: count(r.lostTo) },
    };
  } catch {
    return undefined;
  }
}

/**
 * The queue once the server has taken a batch: its events go; `drops` stays
 * (it is a total). Only a receipt from before totals takes out the drops it
 * reported, as it did then: right whether or not the lost bytes it carried
 * were taken in since (those that were are taken out again, those that were
 * not are marked seen).
 */
export function applyReceipt(q: ReportQueue, r: SendReceipt): ReportQueue {
  const ids = new Set(r.ids);
  const out = { ...q, events: q.events.filter((e) => !ids.has(e.id)) };
  if (!r.before) return out;
  const { dropped, lostFrom, lostTo } = r.before;
  const absorbed = Math.max(0, Math.min(q.lostSeen, lostTo) - lostFrom);
  return { ...out, drops: Math.max(0, q.drops - dropped - absorbed), lostSeen: Math.max(q.lostSeen, lostTo) };
}

/**
 * Receipt names a queue remembers: more than can be beside it at once, so a
 * reader without the lock that listed a receipt before a writer applied and
 * removed it still finds it named (receipts are rare: a send whose edit
 * could not get the lock).
 */
const APPLIED_KEPT = 64;

/**
 * The queue with the receipts beside it applied, each once: those it has
 * applied before (named in `applied`: a crash may have kept their files, or
 * a reader listed them before they were removed) are skipped.
 */
export function applyReceipts(q: ReportQueue, receipts: readonly NamedReceipt[]): ReportQueue {
  const before = q.applied ?? [];
  let out = q;
  const now: string[] = [];
  for (const { name, receipt } of receipts) {
    if (before.includes(name)) continue;
    if (receipt) out = applyReceipt(out, receipt);
    now.push(name);
  }
  if (now.length === 0) return out;
  return { ...out, applied: [...before, ...now].slice(-APPLIED_KEPT) };
}

/** Spilled events that a receipt says the server has already: not taken in again. */
export function undelivered(
  spilled: readonly DeviceEvent[],
  receipts: readonly NamedReceipt[],
): DeviceEvent[] {
  const ids = new Set(receipts.flatMap((r) => r.receipt?.ids ?? []));
  return spilled.filter((e) => !ids.has(e.id));
}

/**
 * The batch a send makes of the queue (receipts applied) and of what was
 * spilled beside it, read without the lock: the queued events, then the
 * spilled ones, up to a batch's limit (the rest stay where they are), and
 * the queue's drop total with the lost bytes it has not taken in: the total
 * it will have once a writer takes them in, so the server never sees more
 * than the queue will count. Nothing is counted here: whoever holds the
 * lock next counts (once) what did not fit. A queue no writer has written
 * yet has no id to count under: its drops go with a later batch.
 */
export function outgoing(
  q: ReportQueue,
  spilled: readonly DeviceEvent[],
  lostBytes: number,
): { events: DeviceEvent[]; drops?: Drops; receipt: SendReceipt } {
  const ids = new Set(q.events.map((e) => e.id));
  const fresh = spilled.filter((e) => !ids.has(e.id));
  const events = [...q.events, ...fresh].slice(0, MAX_EVENTS_PER_BATCH);
  const total = Math.min(q.drops + lostSince(q, lostBytes), MAX_DROPS_TOTAL);
  return {
    events,
    ...(q.id !== undefined && total > 0 ? { drops: { queue: q.id, total } } : {}),
    receipt: { ids: events.map((e) => e.id) },
  };
}

export type Batch = ReturnType<typeof outgoing>;

/**
 * The part of a batch that a device sends while the server has asked it to
 * wait (a 429): its state events (STATE_EVENTS), which the server admits
 * beyond its limit, and the drop total. Undefined when there are none.
 */
export function stateOnly(batch: Batch): Batch | undefined {
  const events = batch.events.filter((e) => STATE_EVENTS.has(e.type));
  if (events.length === 0) return undefined;
  return { ...batch, events, receipt: { ...batch.receipt, ids: events.map((e) => e.id) } };
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
