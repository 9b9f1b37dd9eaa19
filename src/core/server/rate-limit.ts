/**
 * Token buckets per key (a client address, an enrolment key's name): each
 * key may spend `burst` requests at once and earns `perMinute` back over a
 * minute. Memory is bounded: a bucket that has refilled completely is the
 * same as no bucket and is dropped, and at most `maxKeys` buckets are kept
 * (the least recently used goes first; it comes back full, so an attacker
 * who floods the table gains at most one burst per evicted key, while the
 * table itself can never grow past the cap). Pure: the caller gives the time.
 */

export interface BucketPolicy {
  /** Requests a key may make at once. */
  burst: number;
  /** Requests it earns back per minute. */
  perMinute: number;
}

export type Take = { allowed: true } | { allowed: false; retryAfterSeconds: number };

interface Bucket {
  tokens: number;
  at: number;
}

export class TokenBuckets {
  // A Map iterates in insertion order: re-inserting on use keeps the least recently used first.
  private readonly buckets = new Map<string, Bucket>();

  constructor(
    private readonly policy: BucketPolicy,
    private readonly maxKeys: number,
  ) {
    if (!(policy.burst >= 1 && policy.perMinute > 0 && maxKeys >= 1))
      throw new RangeError("a bucket needs burst >= 1, perMinute > 0 and room for one key");
  }

  /** Spends one request of `key` at `nowMs`, or says when the next one is earned. */
  take(key: string, nowMs: number): Take {
    const { burst, perMinute } = this.policy;
    const perMs = perMinute / 60_000;
    const old = this.buckets.get(key);
    // A clock that went back earns nothing rather than a negative amount.
    const tokens = old ? Math.min(burst, old.tokens + Math.max(0, nowMs - old.at) * perMs) : burst;
    this.buckets.delete(key);
    if (tokens < 1) {
      this.buckets.set(key, { tokens, at: nowMs });
      return { allowed: false, retryAfterSeconds: Math.max(1, Math.ceil((1 - tokens) / perMs / 1000)) };
    }
    this.buckets.set(key, { tokens: tokens - 1, at: nowMs });
    this.sweep(nowMs);
    return { allowed: true };
  }

  /** Buckets kept now (for tests and metrics). */
  get size(): number {
    return this.buckets.size;
  }

  private sweep(nowMs: number): void {
    const refillMs = (this.policy.burst / this.policy.perMinute) * 60_000;
    // Oldest first: stop at the first bucket still refilling, all after it were used later.
    for (const [key, b] of this.buckets) {
      if (this.buckets.size > this.maxKeys || nowMs - b.at >= refillMs) this.buckets.delete(key);
      else break;
    }
  }
}

/**
 * The key of a client address: IPv4 as it is (also when IPv4-mapped), IPv6
 * by its /64, the smallest block a single site usually gets, so that
 * rotating through one's own addresses does not reset the limit.
 */
export function addressKey(address: string | undefined): string {
  if (!address) return "unknown";
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1] as string;
  if (!address.includes(":")) return address;
  const [head = "", tail = ""] = address.split("::");
  const left = head ? head.split(":") : [];
  const right = tail ? tail.split(":") : [];
  const groups = address.includes("::")
    ? [...left, ...Array<string>(Math.max(0, 8 - left.length - right.length)).fill("0"), ...right]
    : left;
  return `${groups
    .slice(0, 4)
    .map((g) => (g.replace(/^0+/, "") || "0").toLowerCase())
    .join(":")}::/64`;
}
