/**
 * The rate limit of POST /v1/events (core/server/rate-limit.ts): a token
 * bucket per device, so one device that loops (a crashing boot unit, a
 * script calling os-update --check) cannot take the database's time from the
 * rest of the fleet. A refusal is a 429 with Retry-After and the code
 * RATE_LIMITED; the device keeps its events and sends them after that time
 * (io/update/reporter.ts). Except a batch of state events only (committed,
 * fell_back, failed…: what rollouts judge waves on), which a second, small
 * bucket per device admits beyond the first: an operator learns of a
 * commit at once, and a looping device still stores at most that many
 * batches more. Memory is bounded like the enrolment limit's: a refilled
 * bucket is dropped, and at most maxClients are kept per table.
 */
import type { ServerConfig } from "../../../core/config.ts";
import { TokenBuckets, type BucketPolicy } from "../../../core/server/rate-limit.ts";
import { HttpError } from "../http-answer.ts";

export interface ReportLimits {
  perDevice: BucketPolicy;
  stateEvents: BucketPolicy;
  maxClients: number;
}

/**
 * A device sends a batch at the end of a run and before a kexec, a commit or
 * a rollback: a few a minute while it updates. Far above that, a device is
 * looping.
 */
export const DEFAULT_REPORT_LIMITS: ReportLimits = {
  perDevice: { burst: 60, perMinute: 30 },
  // An update is three such batches (written and kexec, committed, or a fallback); a failing one a few.
  stateEvents: { burst: 10, perMinute: 2 },
  maxClients: 100_000,
};

type LimitConfig = NonNullable<NonNullable<ServerConfig["serve"]>["report_limit"]>;

export function reportLimits(conf: LimitConfig | undefined): ReportLimits {
  const d = DEFAULT_REPORT_LIMITS;
  return {
    perDevice: {
      burst: conf?.per_device?.burst ?? d.perDevice.burst,
      perMinute: conf?.per_device?.per_minute ?? d.perDevice.perMinute,
    },
    stateEvents: {
      burst: conf?.state_events?.burst ?? d.stateEvents.burst,
      perMinute: conf?.state_events?.per_minute ?? d.stateEvents.perMinute,
    },
    maxClients: conf?.max_clients ?? d.maxClients,
  };
}

export interface ReportLimiter {
  /** Spends one batch of `device`: undefined when it may send, else the 429 to answer. */
  take(device: string): HttpError | undefined;
  /** Spends one state-events batch of a device past take's limit; throws the 429 once that is spent too. */
  takeState(device: string): void;
}

export function reportLimiter(limits: ReportLimits, now: () => Date): ReportLimiter {
  const table = (policy: BucketPolicy, what: string, key: string) => {
    const buckets = new TokenBuckets(policy, limits.maxClients);
    return (device: string): HttpError | undefined => {
      const r = buckets.take(device, now().getTime());
      if (r.allowed) return undefined;
      return new HttpError(
        429,
        `too many ${what} from device ${device} (at most ${policy.burst} at once, ${policy.perMinute} a minute): retry in ${r.retryAfterSeconds} s`,
        { "retry-after": String(r.retryAfterSeconds), "x-eos-error": "RATE_LIMITED" },
        { code: "REFUSED", hint: `serve.report_limit.${key} in the server's config sets the limit` },
      );
    };
  };
  const all = table(limits.perDevice, "reports", "per_device");
  const state = table(limits.stateEvents, "state reports", "state_events");
  return {
    take: all,
    takeState(device) {
      const refusal = state(device);
      if (refusal) throw refusal;
    },
  };
}
