import { test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import {
  assign,
  bucketOf,
  countWave,
  evaluate,
  formatWaves,
  parseShare,
  parseWaves,
  waveOf,
  type Rollout,
  type WaveMember,
} from "../../src/core/fleet/rollout.ts";
import {
  checkAssignment,
  signAssignment,
  tokenDigest,
  type AssignmentPayload,
} from "../../src/core/update/assignment.ts";
import type { Manifest } from "../../src/core/manifest.ts";
import { EosError } from "../../src/core/errors.ts";

const T0 = "2026-01-01T00:00:00.000Z";
const at = (s: number) => new Date(Date.parse(T0) + s * 1000);

function rollout(over: Partial<Rollout> = {}): Rollout {
  return {
    id: "r1",
    image: "EOS.x86_64-AB",
    version: "2.0.0",
    previous: "1.0.0",
    filter: { tags: [] },
    waves: parseWaves("25%,100%"),
    soak_seconds: 60,
    error_threshold: 0.2,
    success_threshold: 0.8,
    state: "running",
    current_wave: 0,
    wave_started: T0,
    reason: null,
    created: T0,
    ...over,
  };
}

const usage = (fn: () => unknown, pattern: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof EosError && e.code === "USAGE" && pattern.test(e.message));

test("waves parse from shares and canary tags, and refuse what could never complete", () => {
  assert.deepEqual(parseWaves("tag:canary, 10%,100%"), [
    { tag: "canary" },
    { percent: 10 },
    { percent: 100 },
  ]);
  assert.equal(formatWaves(parseWaves("1%,10%,50%,100%")), "1%,10%,50%,100%");
  usage(() => parseWaves("10%,50%"), /waves: the last wave must be 100%/);
  usage(() => parseWaves("50%,10%,100%"), /waves\[1\]: 10% must be larger/);
  usage(() => parseWaves("0%,100%"), /waves\[0\]: "0%" is neither/);
  usage(() => parseWaves("tag:bad tag,100%", "--waves"), /--waves\[0\]: not a tag/);
  usage(() => parseWaves(""), /at least one wave/);
  assert.equal(parseShare("5%", "x"), 0.05);
  assert.equal(parseShare("0.5", "x"), 0.5);
  usage(() => parseShare("150%", "--error-threshold"), /--error-threshold: a share/);
});

test("a device's wave is stable, cumulative, and differs between rollouts", () => {
  const r = rollout({ waves: parseWaves("tag:canary,10%,50%,100%") });
  const ids = Array.from({ length: 1000 }, (_, i) => `dev-${i}`);
  const waves = ids.map((id) => waveOf(r, id, []));
  assert.deepEqual(
    ids.map((id) => waveOf(r, id, [])),
    waves,
    "the same every time",
  );
  const share = (w: number) => waves.filter((x) => x <= w).length / ids.length;
  assert.ok(share(1) > 0.06 && share(1) < 0.14, `≈10% in the first share wave: ${share(1)}`);
  assert.ok(share(2) > 0.44 && share(2) < 0.56, `≈50% by the second: ${share(2)}`);
  assert.equal(share(3), 1);
  assert.equal(waveOf(r, "dev-1", ["canary"]), 0, "the canary tag takes the first wave");
  assert.ok(!waves.includes(0), "no untagged device is a canary");
  const other = ids.filter((id) => bucketOf("r1", id) !== bucketOf("r2", id)).length;
  assert.ok(other > 990, "another rollout orders the devices otherwise");
});

test("assignment: pin first, then the newest covering rollout; outside it, the newest published", () => {
  const r = rollout({ filter: { tags: ["lab"] } });
  const inFirst = Array.from({ length: 100 }, (_, i) => `d${i}`).find((id) => waveOf(r, id, ["lab"]) === 0);
  const inSecond = Array.from({ length: 100 }, (_, i) => `d${i}`).find((id) => waveOf(r, id, ["lab"]) === 1);
  assert.ok(inFirst && inSecond);
  assert.deepEqual(assign({ id: inFirst, tags: ["lab"] }, [r], undefined), {
    kind: "rollout",
    version: "2.0.0",
    rollout: "r1",
  });
  assert.deepEqual(assign({ id: inSecond, tags: ["lab"] }, [r], undefined), {
    kind: "held",
    version: "1.0.0",
    rollout: "r1",
  });
  assert.equal(assign({ id: inFirst, tags: [] }, [r], undefined), undefined, "not covered by the filter");
  assert.deepEqual(assign({ id: inSecond, tags: ["lab"] }, [r], "0.9"), { kind: "pinned", version: "0.9" });
  assert.deepEqual(
    assign({ id: inSecond, tags: ["lab"] }, [{ ...r, current_wave: 1 }], undefined)?.kind,
    "rollout",
  );
  assert.deepEqual(assign({ id: inFirst, tags: ["lab"] }, [{ ...r, state: "aborted" }], undefined), {
    kind: "aborted",
    version: "1.0.0",
    rollout: "r1",
    from: "2.0.0",
  });
  assert.equal(assign({ id: inSecond, tags: ["lab"] }, [{ ...r, state: "paused" }], undefined)?.kind, "held");
});

function members(r: Rollout, n: number, pick: (i: number) => Partial<WaveMember>): WaveMember[] {
  const out: WaveMember[] = [];
  for (let i = 0; out.length < n; i++) {
    const id = `m${i}`;
    if (waveOf(r, id, []) !== r.current_wave) continue;
    out.push({
      id,
      tags: [],
      state: "current",
      running_version: "1.0.0",
      last_event_at: T0,
      ...pick(out.length),
    });
  }
  return out;
}

test("thresholds: errors above the share pause with the reason; soaked success opens the next wave", () => {
  const r = rollout();
  const fine = members(r, 10, (i) => (i < 8 ? { state: "committed", running_version: "2.0.0" } : {}));
  assert.deepEqual(countWave(r, fine), { wave: 0, members: 10, succeeded: 8, errors: 0 });
  assert.deepEqual(evaluate(r, countWave(r, fine), at(59)), { kind: "none" }, "still soaking");
  assert.deepEqual(evaluate(r, countWave(r, fine), at(60)), { kind: "advance", wave: 1 });
  const fewer = members(r, 10, (i) => (i < 7 ? { state: "committed", running_version: "2.0.0" } : {}));
  assert.deepEqual(evaluate(r, countWave(r, fewer), at(600)), { kind: "none" }, "70% < 80% success");
  assert.deepEqual(evaluate({ ...r, current_wave: 1 }, countWave({ ...r, current_wave: 1 }, []), at(60)), {
    kind: "complete",
  });

  const bad = members(r, 10, (i) =>
    i < 3 ? { state: i === 0 ? "failed" : "fell-back", last_event_at: at(5).toISOString() } : {},
  );
  const step = evaluate(r, countWave(r, bad), at(10));
  assert.equal(step.kind, "pause");
  assert.match(
    step.kind === "pause" ? step.reason : "",
    /^wave 1: 3 of 10 devices \(30%\) failed, fell back or rolled back; the error threshold is 20%$/,
  );
  const atThreshold = members(r, 10, (i) =>
    i < 2 ? { state: "rolled-back", last_event_at: at(5).toISOString() } : {},
  );
  assert.equal(evaluate(r, countWave(r, atThreshold), at(10)).kind, "none", "20% is not above 20%");
  const old = members(r, 10, (i) => (i < 3 ? { state: "failed", last_event_at: at(-5).toISOString() } : {}));
  assert.equal(countWave(r, old).errors, 0, "errors from before the wave opened do not count");
  assert.deepEqual(evaluate({ ...r, state: "paused" }, countWave(r, bad), at(10)), { kind: "none" });
});

const manifest = (version: string, sha: string): Manifest => ({
  schema: 1,
  name: "EOS.x86_64-AB",
  version,
  architecture: "x86_64",
  created: T0,
  partitions: { root: { label: "p.lxreadonly", size: 1, sha256: sha } },
});

test("a downgrade assignment is accepted only signed by a trusted key and bound to this device and root", () => {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const other = generateKeyPairSync("ed25519");
  const v1 = manifest("1.0.0", "a".repeat(64));
  const running = "b".repeat(64);
  const payload: AssignmentPayload = {
    kind: "eos-downgrade-assignment",
    image: v1.name,
    version: "1.0.0",
    sha256: v1.partitions.root.sha256,
    from_sha256: running,
    device_token_sha256: tokenDigest("tok-1"),
    reason: "abort r1",
    expires: at(3600).toISOString(),
  };
  const want = { manifest: v1, runningSha256: running, token: "tok-1", now: at(0) };
  const doc = signAssignment(payload, privateKey);
  assert.equal(checkAssignment(JSON.parse(JSON.stringify(doc)), [publicKey], want).reason, "abort r1");
  const refused = (d: unknown, pattern: RegExp, keys = [publicKey], w = want) =>
    assert.throws(
      () => checkAssignment(d, keys, w),
      (e: unknown) => e instanceof EosError && e.code === "DOWNGRADE" && pattern.test(e.message),
    );
  refused({ assignment: payload, signatures: [] }, /not signed by a trusted assignment key/);
  refused(signAssignment(payload, other.privateKey), /not signed by a trusted/);
  refused({ ...doc, assignment: { ...payload, version: "0.1" } }, /not signed by a trusted/, [publicKey]);
  refused(doc, /trusts no assignment key/, []);
  refused(doc, /another device/, [publicKey], { ...want, token: "tok-2" });
  refused(doc, /another root/, [publicKey], { ...want, runningSha256: "c".repeat(64) });
  refused(doc, /not the offered/, [publicKey], { ...want, manifest: manifest("0.5.0", "a".repeat(64)) });
  refused(doc, /expired/, [publicKey], { ...want, now: at(3600) });
  refused({ allow_downgrade: true }, /not an assignment/);
});
