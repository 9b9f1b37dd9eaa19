import { test } from "node:test";
import assert from "node:assert/strict";
import { addressKey, TokenBuckets } from "../../src/core/server/rate-limit.ts";

const MIN = 60_000;

test("a key spends its burst at once, then waits for what it earns back", () => {
  const b = new TokenBuckets({ burst: 3, perMinute: 6 }, 100);
  for (let i = 0; i < 3; i++) assert.deepEqual(b.take("a", 0), { allowed: true }, `request ${i}`);
  assert.deepEqual(b.take("a", 0), { allowed: false, retryAfterSeconds: 10 }, "6 a minute: one every 10 s");
  assert.deepEqual(b.take("a", 4_000), { allowed: false, retryAfterSeconds: 6 }, "a refusal earns nothing");
  assert.deepEqual(b.take("a", 10_000), { allowed: true });
  assert.equal(b.take("a", 10_000).allowed, false);
  assert.equal(b.take("other", 10_000).allowed, true, "keys do not share a bucket");
});

test("a bucket never holds more than its burst, however long the key was idle", () => {
  const b = new TokenBuckets({ burst: 2, perMinute: 60 }, 100);
  assert.equal(b.take("a", 0).allowed, true);
  const later = 1000 * MIN;
  assert.equal(b.take("a", later).allowed, true);
  assert.equal(b.take("a", later).allowed, true);
  assert.equal(b.take("a", later).allowed, false);
});

test("a clock that goes back earns nothing", () => {
  const b = new TokenBuckets({ burst: 1, perMinute: 1 }, 100);
  assert.equal(b.take("a", 10 * MIN).allowed, true);
  assert.equal(b.take("a", 0).allowed, false);
});

test("memory is bounded: full buckets expire and the table never passes its cap", () => {
  const b = new TokenBuckets({ burst: 2, perMinute: 60 }, 50);
  for (let i = 0; i < 10_000; i++) b.take(`client-${i}`, i);
  assert.ok(b.size <= 50, `kept ${b.size}`);
  // Two seconds refill a burst of 2 at one a second: every bucket is full again and goes.
  b.take("late", 10_000 + 2000);
  assert.equal(b.size, 1);
  // The most recently used survive eviction; the least recently used go first.
  const c = new TokenBuckets({ burst: 1, perMinute: 1 }, 2);
  c.take("old", 0);
  c.take("mid", 1);
  c.take("old", 2); // refused, but used: now the most recent
  c.take("new", 3);
  assert.equal(c.take("old", 4).allowed, false, "old was kept");
  assert.equal(c.take("mid", 5).allowed, true, "mid was evicted: it comes back full");
});

test("bad policies are refused", () => {
  assert.throws(() => new TokenBuckets({ burst: 0, perMinute: 1 }, 1), RangeError);
  assert.throws(() => new TokenBuckets({ burst: 1, perMinute: 0 }, 1), RangeError);
  assert.throws(() => new TokenBuckets({ burst: 1, perMinute: 1 }, 0), RangeError);
});

test("addressKey: IPv4 as is, IPv4-mapped as IPv4, IPv6 by its /64", () => {
  assert.equal(addressKey("192.0.2.7"), "192.0.2.7");
  assert.equal(addressKey("::ffff:192.0.2.7"), "192.0.2.7");
  assert.equal(addressKey("2001:db8:0:1::17"), "2001:db8:0:1::/64");
  assert.equal(addressKey("2001:0DB8:0000:0001:aaaa:bbbb:cccc:dddd"), "2001:db8:0:1::/64");
  assert.equal(addressKey("2001:db8::1"), "2001:db8:0:0::/64");
  assert.equal(addressKey("::1"), "0:0:0:0::/64");
  assert.equal(addressKey(undefined), "unknown");
});
