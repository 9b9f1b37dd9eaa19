/**
 * Maintenance windows: when a device may switch to a new root (mark the
 * trial slot, kexec or reboot). Downloading is allowed at any time. A window
 * is one or more terms separated by `;`, each `[DAYS ]HH:MM-HH:MM` in UTC,
 * DAYS a comma list of weekdays or ranges (`Mon-Fri`, `Sat,Sun`). A term
 * whose end is not after its start runs across midnight and belongs to the
 * day it starts on: `Fri 22:00-02:00` is Friday 22:00 to Saturday 02:00.
 * `24:00` ends a term at midnight. Pure: the caller gives the time.
 */
import { EosError } from "../errors.ts";

/** The header of the manifest answer that tells a device its window (absent: any time). */
export const WINDOW_HEADER = "x-eos-window";

export const WEEKDAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"] as const;
const DAY = 24 * 60;

export interface WindowTerm {
  /** Weekdays (0 = Sunday) the term starts on. */
  days: readonly number[];
  /** Minutes after midnight UTC. */
  start: number;
  end: number;
}

export interface MaintenanceWindow {
  /** The spec as given, trimmed: what the server sends and messages show. */
  spec: string;
  terms: readonly WindowTerm[];
}

function bad(spec: string, why: string): EosError {
  return new EosError("USAGE", `window ${JSON.stringify(spec)}: ${why}`, {
    hint: 'e.g. "Mon-Fri 22:00-04:00; Sat,Sun 00:00-24:00" (UTC)',
  });
}

function dayIndex(spec: string, name: string): number {
  const i = WEEKDAYS.findIndex((d) => d.toLowerCase() === name.toLowerCase());
  if (i < 0) throw bad(spec, `${JSON.stringify(name)} is not a weekday (Mon, Tue, … Sun)`);
  return i;
}

function parseDays(spec: string, text: string): number[] {
  const days = new Set<number>();
  for (const part of text.split(",")) {
    const [from, to, ...rest] = part.split("-");
    if (from === undefined || rest.length > 0) throw bad(spec, `${JSON.stringify(part)} is not a day range`);
    const a = dayIndex(spec, from);
    const b = to === undefined ? a : dayIndex(spec, to);
    // Fri-Mon wraps over the weekend.
    for (let d = a; ; d = (d + 1) % 7) {
      days.add(d);
      if (d === b) break;
    }
  }
  return [...days].sort((x, y) => x - y);
}

function parseTime(spec: string, text: string): number {
  const m = /^([01]\d|2[0-4]):([0-5]\d)$/.exec(text);
  const minutes = m ? Number(m[1]) * 60 + Number(m[2]) : NaN;
  if (!(minutes <= DAY)) throw bad(spec, `${JSON.stringify(text)} is not a time HH:MM (00:00-24:00)`);
  return minutes;
}

export function parseWindow(spec: string): MaintenanceWindow {
  const text = spec.trim();
  if (text.length === 0 || text.length > 500) throw bad(spec, "give 1 to 500 characters");
  const terms = text.split(";").map((raw) => {
    const words = raw.trim().split(/\s+/);
    if (words.length < 1 || words.length > 2 || words[0] === "")
      throw bad(spec, "each term is [DAYS] HH:MM-HH:MM");
    const range = words[words.length - 1] as string;
    const days = words.length === 2 ? parseDays(spec, words[0] as string) : [0, 1, 2, 3, 4, 5, 6];
    const [from, to, ...rest] = range.split("-");
    if (from === undefined || to === undefined || rest.length > 0)
      throw bad(spec, `${JSON.stringify(range)} is not HH:MM-HH:MM`);
    const start = parseTime(spec, from);
    const end = parseTime(spec, to);
    if (start === DAY) throw bad(spec, "a term cannot start at 24:00");
    if (start === end) throw bad(spec, `${range} is empty (00:00-24:00 is the whole day)`);
    return { days, start, end };
  });
  return { spec: text, terms };
}

/** Whether `now` is inside the window. */
export function inWindow(w: MaintenanceWindow, now: Date): boolean {
  const day = now.getUTCDay();
  const minute = now.getUTCHours() * 60 + now.getUTCMinutes();
  const yesterday = (day + 6) % 7;
  return w.terms.some((t) =>
    t.start < t.end
      ? t.days.includes(day) && minute >= t.start && minute < t.end
      : (t.days.includes(day) && minute >= t.start) || (t.days.includes(yesterday) && minute < t.end),
  );
}

/** When the window next opens after `now` (within a week), or undefined when it is open or never opens. */
export function nextOpening(w: MaintenanceWindow, now: Date): Date | undefined {
  if (inWindow(w, now)) return undefined;
  const midnight = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
  let best: number | undefined;
  for (let ahead = 0; ahead <= 7; ahead++) {
    const day = (now.getUTCDay() + ahead) % 7;
    for (const t of w.terms) {
      const at = midnight + (ahead * DAY + t.start) * 60_000;
      if (t.days.includes(day) && at > now.getTime() && (best === undefined || at < best)) best = at;
    }
  }
  return best === undefined ? undefined : new Date(best);
}

/** A device group's window: the first group whose tags the device all has. */
export function windowFor(
  groups: ReadonlyArray<{ tags: readonly string[]; window: string }>,
  tags: readonly string[],
): string | undefined {
  return groups.find((g) => g.tags.every((t) => tags.includes(t)))?.window;
}

/** A maintenance window group as the config and the admin API hold it. */
export interface WindowGroup {
  tags: string[];
  window: string;
}

/** The same group: the same set of tags (order and repeats aside). */
export function sameGroup(a: readonly string[], b: readonly string[]): boolean {
  const x = new Set(a);
  const y = new Set(b);
  return x.size === y.size && [...x].every((t) => y.has(t));
}

/** How messages name a group. */
export function groupName(tags: readonly string[]): string {
  return tags.length === 0 ? "every device (the default)" : `devices tagged ${tags.join(", ")}`;
}

/**
 * The groups with this group's window set. An existing group keeps its place;
 * a new one goes before the first group that would otherwise win for its
 * devices (first match wins, and a group whose tags are a subset of the new
 * one's matches every device of it), so that the window set is the one its
 * devices get.
 */
export function withGroupWindow(
  groups: readonly WindowGroup[],
  tags: readonly string[],
  window: string,
): WindowGroup[] {
  const group = { tags: [...tags], window };
  const at = groups.findIndex((g) => sameGroup(g.tags, tags));
  if (at >= 0) return groups.map((g, i) => (i === at ? group : g));
  const shadow = groups.findIndex((g) => g.tags.every((t) => tags.includes(t)));
  const before = shadow < 0 ? groups.length : shadow;
  return [...groups.slice(0, before), group, ...groups.slice(before)];
}

/** The groups without this group, or undefined when it has no window of its own. */
export function withoutGroup(
  groups: readonly WindowGroup[],
  tags: readonly string[],
): WindowGroup[] | undefined {
  const kept = groups.filter((g) => !sameGroup(g.tags, tags));
  return kept.length === groups.length ? undefined : kept;
}
