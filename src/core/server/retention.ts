/**
 * Which published versions of an image the store keeps. The newest `keep`
 * stay (the current one, the one before it for streams still reading it, and
 * the sources of the next version's deltas); an older one stays while the
 * fleet still needs it: a device runs it, a rollout names it (its version,
 * or the previous one an abort assigns back) or a device is pinned to it.
 * Everything else may go.
 */

export interface PublishedEntry {
  /** The version directory's name. */
  vid: string;
  /** The manifest's version. */
  version: string;
}

/** Versions the fleet needs, each with why (for the log and `--json`). */
export type VersionsInUse = ReadonlyMap<string, string>;

/** At least the current version and the one before it: a stream may still read that one by path. */
export const MIN_KEEP = 2;

export interface RetentionPlan {
  keep: Array<PublishedEntry & { why: string }>;
  drop: PublishedEntry[];
}

/** `history` newest first, as the store lists it. */
export function planRetention(
  history: readonly PublishedEntry[],
  keep: number,
  inUse: VersionsInUse,
): RetentionPlan {
  const newest = Math.max(MIN_KEEP, keep);
  const plan: RetentionPlan = { keep: [], drop: [] };
  history.forEach((entry, i) => {
    const why = i === 0 ? "current" : i < newest ? `one of the newest ${newest}` : inUse.get(entry.version);
    if (why === undefined) plan.drop.push(entry);
    else plan.keep.push({ ...entry, why });
  });
  return plan;
}
