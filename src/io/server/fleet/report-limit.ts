/**
 * The rate limit of POST /v1/events (core/server/rate-limit.ts): a token
 * bucket per device, so one device that loops (a crashing boot unit, a
 * script calling os-update --check) cannot take the database's time from the
 * rest of the fleet. A refusal is a 429 with Retry-After and the code
 * RATE_LIMITED; the device keeps its events and sends them after that time
 * (io/update/reporter.ts). Memory is bounded like the enrolment limit's: a
 * refilled bucket is dropped, and at most maxClients are kept.
 */
import type { ServerConfig } from "../../../core/config.ts";
import { TokenBuckets, type BucketPolicy } from "../../../core/server/rate-limit.ts";
import { HttpError } from "../http-answer.ts";

export interface ReportLimits {
  perDevice: BucketPolicy;
  maxClients: number;
}

/**
 * A device sends a batch at the end of a run and before a kexec, a commit or
 * a rollback: a few a minute while it updates. Far above that, a device is
 * looping.
 */
export const DEFAULT_REPORT_LIMITS: ReportLimits = {
  perDevice: { burst: 60, perMinute: 30 },
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
    maxClients: conf?.max_clients ?? d.maxClients,
  };
}

/** Returns take(device), which throws the 429 once that device has spent its bucket. */
export function reportLimiter(limits: ReportLimits, now: () => Date): (device: string) => void {
  const buckets = new TokenBuckets(limits.perDevice, limits.maxClients);
  const { burst, perMinute } = limits.perDevice;
  return (device) => {
    const r = buckets.take(device, now().getTime());
    if (!r.allowed)
      throw new HttpError(
        429,
        `too many reports from device ${device} (at most ${burst} at once, ${perMinute} a minute): retry in ${r.retryAfterSeconds} s`,
        { "retry-after": String(r.retryAfterSeconds), "x-eos-error": "RATE_LIMITED" },
        { code: "REFUSED", hint: "serve.report_limit in the server's config sets the limit" },
      );
  };
}
