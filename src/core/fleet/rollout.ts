/**
 * Rollouts, the pure part: how waves are written and parsed, which wave a
 * device falls into, which version a device is told, and when a wave moves
 * on, completes or pauses the rollout. The store (io/server/fleet) feeds it
 * rows and writes back what it decides, so every decision here is testable
 * without a database or a clock.
 */
import { createHash } from "node:crypto";
import { parseDuration } from "../config.ts";
import { EosError } from "../errors.ts";
import { TAG } from "./admin.ts";
import type { DeviceState } from "./events.ts";

/** A wave: a share of the covered devices (cumulative, by stable hash), or the devices with a tag. */
export type Wave = { percent: number } | { tag: string };

export type RolloutState = "running" | "paused" | "completed" | "aborted";
export const ROLLOUT_STATES: readonly RolloutState[] = ["running", "paused", "completed", "aborted"];

export interface RolloutFilter {
  /** A device is covered when it has every one of these tags (none: every device of the image). */
  tags: string[];
}

export interface Rollout {
  id: string;
  image: string;
  /** The version the rollout brings. */
  version: string;
  /** What devices outside the released waves keep, and what abort assigns back. */
  previous: string;
  filter: RolloutFilter;
  waves: Wave[];
  soak_seconds: number;
  /** failed + fell back + rolled back, as a share of the wave, above which the rollout pauses. */
  error_threshold: number;
  /** Share of the wave running the version, at or above which (after the soak) the next wave opens. */
  success_threshold: number;
  state: RolloutState;
  /** Index into waves: the newest released wave. */
  current_wave: number;
  wave_started: string;
  reason: string | null;
  created: string;
}

export const ROLLOUT_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const MAX_WAVES = 16;

/** `1%,10%,50%,100%` or `tag:canary,50%,100%`: a wave list as the CLI and the API write it. */
export function parseWaves(text: string, field = "waves"): Wave[] {
  const parts = text
    .split(",")
    .map((p) => p.trim())
    .filter((p) => p !== "");
  if (parts.length === 0) throw new EosError("USAGE", `${field}: at least one wave, e.g. 10%,100%`);
  if (parts.length > MAX_WAVES) throw new EosError("USAGE", `${field}: at most ${MAX_WAVES} waves`);
  let last = 0;
  const waves = parts.map((part, i): Wave => {
    if (part.startsWith("tag:")) {
      const tag = part.slice(4);
      if (!TAG.test(tag)) throw new EosError("USAGE", `${field}[${i}]: not a tag: ${JSON.stringify(tag)}`);
      return { tag };
    }
    const m = /^(\d{1,3}(?:\.\d{1,2})?)%$/.exec(part);
    const percent = m ? Number(m[1]) : NaN;
    if (!(percent > 0 && percent <= 100))
      throw new EosError(
        "USAGE",
        `${field}[${i}]: ${JSON.stringify(part)} is neither a share (1%…100%) nor tag:NAME`,
      );
    if (percent <= last)
      throw new EosError("USAGE", `${field}[${i}]: ${part} must be larger than the wave before it`);
    last = percent;
    return { percent };
  });
  const final = waves[waves.length - 1] as Wave;
  if (!("percent" in final) || final.percent !== 100)
    throw new EosError("USAGE", `${field}: the last wave must be 100%`, {
      hint: "otherwise the rollout could never complete",
    });
  return waves;
}

export function formatWaves(waves: readonly Wave[]): string {
  return waves.map((w) => ("tag" in w ? `tag:${w.tag}` : `${w.percent}%`)).join(",");
}

/**
 * A device's place in 0…9999 for one rollout: the same every time it asks
 * (so it stays in its wave), and unrelated between rollouts (so the same
 * devices are not always first).
 */
export function bucketOf(rolloutId: string, deviceId: string): number {
  const digest = createHash("sha256").update(`${rolloutId}\0${deviceId}`, "utf8").digest();
  return digest.readUInt32BE(0) % 10000;
}

/** The first wave that takes the device (waves are cumulative: a later share includes earlier ones). */
export function waveOf(
  rollout: Pick<Rollout, "id" | "waves">,
  deviceId: string,
  tags: readonly string[],
): number {
  const bucket = bucketOf(rollout.id, deviceId);
  const found = rollout.waves.findIndex((w) =>
    "tag" in w ? tags.includes(w.tag) : bucket < Math.round(w.percent * 100),
  );
  // The last wave is 100%: every covered device has a wave.
  return found === -1 ? rollout.waves.length - 1 : found;
}

export function covers(rollout: Pick<Rollout, "filter">, tags: readonly string[]): boolean {
  return rollout.filter.tags.every((t) => tags.includes(t));
}

export type Assignment =
  /** Pinned by an operator: this version, even an older one. */
  | { kind: "pinned"; version: string }
  /** In a released wave: the rollout's version. */
  | { kind: "rollout"; version: string; rollout: string }
  /** Not (yet) in a released wave: the version it has, so it is up to date. */
  | { kind: "held"; version: string; rollout: string }
  /** The rollout was aborted: the previous version, a downgrade allowed by a signed assignment. */
  | { kind: "aborted"; version: string; rollout: string; from: string };

/**
 * Which version one device is told, or undefined for "no rollout covers it":
 * then it gets the newest published version, as before rollouts existed.
 * `rollouts`: the image's rollouts, newest first; the newest that covers the
 * device decides.
 */
export function assign(
  device: { id: string; tags: readonly string[] },
  rollouts: readonly Rollout[],
  pin: string | undefined,
): Assignment | undefined {
  if (pin !== undefined) return { kind: "pinned", version: pin };
  const r = rollouts.find((x) => covers(x, device.tags));
  if (!r) return undefined;
  if (r.state === "aborted") return { kind: "aborted", version: r.previous, rollout: r.id, from: r.version };
  const released = r.state === "completed" || waveOf(r, device.id, device.tags) <= r.current_wave;
  return released
    ? { kind: "rollout", version: r.version, rollout: r.id }
    : { kind: "held", version: r.previous, rollout: r.id };
}

/** What the store knows of one device in a wave, for the thresholds. */
export interface WaveMember {
  id: string;
  tags: readonly string[];
  state: DeviceState;
  running_version: string | null;
  last_event_at: string | null;
}

export const ERROR_STATES: readonly DeviceState[] = ["failed", "fell-back", "rolled-back"];

export interface WaveCount {
  wave: number;
  members: number;
  succeeded: number;
  errors: number;
}

/** The devices of the current wave (that wave alone: earlier waves were judged when they ran). */
export function countWave(rollout: Rollout, members: readonly WaveMember[]): WaveCount {
  const inWave = members.filter(
    (m) => covers(rollout, m.tags) && waveOf(rollout, m.id, m.tags) === rollout.current_wave,
  );
  const since = Date.parse(rollout.wave_started);
  // An error from before this wave opened is not this version's doing.
  const errors = inWave.filter(
    (m) => ERROR_STATES.includes(m.state) && m.last_event_at !== null && Date.parse(m.last_event_at) >= since,
  ).length;
  const succeeded = inWave.filter(
    (m) => m.running_version === rollout.version && !ERROR_STATES.includes(m.state),
  ).length;
  return { wave: rollout.current_wave, members: inWave.length, succeeded, errors };
}

const pct = (x: number) => `${Math.round(x * 1000) / 10}%`;

export type Step =
  | { kind: "none" }
  | { kind: "pause"; reason: string }
  | { kind: "advance"; wave: number }
  | { kind: "complete" };

/** What a running rollout does now: pause (errors), open the next wave or complete (soaked and successful), or wait. */
export function evaluate(rollout: Rollout, count: WaveCount, now: Date): Step {
  if (rollout.state !== "running") return { kind: "none" };
  if (count.members > 0 && count.errors / count.members > rollout.error_threshold) {
    return {
      kind: "pause",
      reason:
        `wave ${count.wave + 1}: ${count.errors} of ${count.members} devices (${pct(count.errors / count.members)}) ` +
        `failed, fell back or rolled back; the error threshold is ${pct(rollout.error_threshold)}`,
    };
  }
  const soaked = now.getTime() - Date.parse(rollout.wave_started) >= rollout.soak_seconds * 1000;
  // An empty wave (1% of a small fleet) has nothing to wait for but its soak.
  const successful = count.members === 0 || count.succeeded / count.members >= rollout.success_threshold;
  if (!soaked || !successful) return { kind: "none" };
  return rollout.current_wave + 1 >= rollout.waves.length
    ? { kind: "complete" }
    : { kind: "advance", wave: rollout.current_wave + 1 };
}

/** A share as the CLI writes it: `5%` or `0.05`. */
export function parseShare(text: string, field: string): number {
  const m = /^(\d{1,3}(?:\.\d+)?)(%?)$/.exec(text.trim());
  const value = m ? Number(m[1]) / (m[2] ? 100 : 1) : NaN;
  if (!(value >= 0 && value <= 1))
    throw new EosError("USAGE", `${field}: a share such as 5% or 0.05, not ${JSON.stringify(text)}`);
  return value;
}

/** `--soak`: a duration (30m, 1h) or 0 for none, in whole seconds. */
export function soakSeconds(text: string, field = "--soak"): number {
  if (/^0+$/.test(text.trim())) return 0;
  try {
    return Math.round(parseDuration(text));
  } catch (error) {
    throw new EosError("USAGE", `${field}: ${(error as Error).message}`);
  }
}

/** What `rollout create` and the dashboard's form assume when not told, written as an operator writes them. */
export const ROLLOUT_DEFAULTS = { soak: "1h", errorThreshold: "10%", successThreshold: "90%" } as const;
