/**
 * A map whose entries expire a fixed time after they were set, with at
 * most `max` entries. The control plane keeps what a device's check reads
 * (its token, its pin and tags, its image's rollouts) here for about a
 * second: the manifest, the signature and the report of one check then cost
 * one database round trip each instead of several, and a change made
 * through another replica is seen within that bound.
 *
 * Every entry lives as long: insertion order is expiry order, so expired
 * entries are dropped from the front as new ones come in, and a full map
 * drops its oldest.
 */
export class TtlCache<K, V> {
  private readonly entries = new Map<K, { value: V; until: number }>();

  constructor(
    readonly ttlMs: number,
    private readonly max: number,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  get(key: K, now: number): V | undefined {
    const e = this.entries.get(key);
    if (!e) return undefined;
    // A clock set back must not keep an entry for longer than the bound.
    if (now >= e.until || now < e.until - this.ttlMs) {
      this.entries.delete(key);
      return undefined;
    }
    return e.value;
  }

  set(key: K, value: V, now: number): void {
    this.entries.delete(key);
    for (const [k, e] of this.entries) {
      if (now < e.until && this.entries.size < this.max) break;
      this.entries.delete(k);
    }
    this.entries.set(key, { value, until: now + this.ttlMs });
  }

  delete(key: K): void {
    this.entries.delete(key);
  }

  /** Drops every entry whose value matches (a revoked device's tokens, say). */
  deleteWhere(matches: (value: V, key: K) => boolean): void {
    for (const [k, e] of this.entries) if (matches(e.value, k)) this.entries.delete(k);
  }

  clear(): void {
    this.entries.clear();
  }
}

/**
 * How long a server keeps what a check reads: a rollout paused, a pin or a
 * tag set, a device token revoked through another replica takes effect
 * within this bound (through the same server, at once).
 */
export const CHECK_CACHE_MS = 1000;
/** Entries per cache: 10k devices checking once a minute keep about 170 a second. */
export const CHECK_CACHE_MAX = 100_000;
