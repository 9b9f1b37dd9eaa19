/**
 * The rate limit of POST /v1/enrol (core/server/rate-limit.ts): a token
 * bucket per client address, taken before the key is even looked at, so
 * guessing keys is slow too; and one per enrolment key, so a leaked key (a
 * copied image) cannot mint device tokens at will from many addresses.
 * A refusal is a 429 with Retry-After and the code RATE_LIMITED.
 */
import type { ServerConfig } from "../../../core/config.ts";
import { addressKey, TokenBuckets, type BucketPolicy } from "../../../core/server/rate-limit.ts";
import { HttpError } from "../http-answer.ts";

export interface EnrolLimits {
  perAddress: BucketPolicy;
  perKey: BucketPolicy;
  /** Buckets kept per table (addresses, keys), the least recently used dropped first. */
  maxClients: number;
}

/** A factory floor behind one NAT address enrols a device every few seconds; a fleet key, 2 a second. */
export const DEFAULT_ENROL_LIMITS: EnrolLimits = {
  perAddress: { burst: 20, perMinute: 20 },
  perKey: { burst: 200, perMinute: 120 },
  maxClients: 10_000,
};

type LimitConfig = NonNullable<NonNullable<ServerConfig["serve"]>["enrol_limit"]>;

export function enrolLimits(conf: LimitConfig | undefined): EnrolLimits {
  const d = DEFAULT_ENROL_LIMITS;
  const policy = (p: { burst?: number; per_minute?: number } | undefined, base: BucketPolicy) => ({
    burst: p?.burst ?? base.burst,
    perMinute: p?.per_minute ?? base.perMinute,
  });
  return {
    perAddress: policy(conf?.per_address, d.perAddress),
    perKey: policy(conf?.per_key, d.perKey),
    maxClients: conf?.max_clients ?? d.maxClients,
  };
}

export interface EnrolLimiter {
  /** Before anything else: the client's address. */
  address(address: string | undefined): void;
  /** Once the bearer token is known to be an enrolment key: that key. */
  key(name: string): void;
}

export function enrolLimiter(limits: EnrolLimits, now: () => Date): EnrolLimiter {
  const addresses = new TokenBuckets(limits.perAddress, limits.maxClients);
  const keys = new TokenBuckets(limits.perKey, limits.maxClients);
  const take = (buckets: TokenBuckets, key: string, what: string, policy: BucketPolicy) => {
    const r = buckets.take(key, now().getTime());
    if (!r.allowed)
      throw new HttpError(
        429,
        `too many enrolments from ${what} (at most ${policy.burst} at once, ${policy.perMinute} a minute): retry in ${r.retryAfterSeconds} s`,
        { "retry-after": String(r.retryAfterSeconds), "x-eos-error": "RATE_LIMITED" },
        { code: "REFUSED", hint: "serve.enrol_limit in the server's config sets the limits" },
      );
  };
  return {
    address: (address) => take(addresses, addressKey(address), "this address", limits.perAddress),
    key: (name) => take(keys, name, `enrolment key ${name}`, limits.perKey),
  };
}
