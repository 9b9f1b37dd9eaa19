/**
 * Rollouts and pins in the control plane's database. Everything a rollout
 * is (its wave, when that wave opened, why it paused) is a row, so a
 * restarted server, or a second one on the same PostgreSQL, carries on
 * where the last left off. Every state change is a conditional update on
 * the state it was decided from: two servers judging the same wave at once
 * move it once.
 */
import { randomBytes } from "node:crypto";
import { sql } from "kysely";
import { EosError } from "../../../core/errors.ts";
import {
  assign,
  countWave,
  evaluate,
  ROLLOUT_ID,
  type Assignment,
  type Rollout,
  type RolloutFilter,
  type RolloutState,
  type Step,
  type Wave,
  type WaveMember,
} from "../../../core/fleet/rollout.ts";
import type { DeviceState } from "../../../core/fleet/events.ts";
import { CHECK_CACHE_MAX, CHECK_CACHE_MS, TtlCache } from "../../../core/fleet/ttl-cache.ts";
import type { FleetDb, RolloutsTable } from "./db.ts";

/** What an operator gives; the store adds the state, the wave position and the times. */
export type NewRollout = Pick<
  Rollout,
  | "image"
  | "version"
  | "previous"
  | "filter"
  | "waves"
  | "soak_seconds"
  | "error_threshold"
  | "success_threshold"
> & { id?: string | undefined };

export type RolloutAction = "pause" | "resume" | "abort";

/** Which states each operator action may start from. */
const FROM: Record<RolloutAction, readonly RolloutState[]> = {
  pause: ["running"],
  resume: ["paused"],
  abort: ["running", "paused", "completed"],
};
const TO: Record<RolloutAction, RolloutState> = { pause: "paused", resume: "running", abort: "aborted" };

function rolloutOf(row: RolloutsTable): Rollout {
  return {
    ...row,
    filter: JSON.parse(row.filter) as RolloutFilter,
    waves: JSON.parse(row.waves) as Wave[],
    state: row.state as RolloutState,
    // PostgreSQL's double precision comes back as a number, SQLite's too; integers likewise.
    soak_seconds: Number(row.soak_seconds),
    error_threshold: Number(row.error_threshold),
    success_threshold: Number(row.success_threshold),
    current_wave: Number(row.current_wave),
  };
}

export class RolloutStore {
  /**
   * What a check reads, kept CHECK_CACHE_MS: each image's rollouts that are not completed (one query
   * a second for the whole fleet) and each device's pin and tags (one query per check, not one per
   * request). Changes made through this server drop them at once; another replica's within the bound.
   */
  private readonly active = new TtlCache<string, Rollout[]>(CHECK_CACHE_MS, 1000);
  private readonly facts = new TtlCache<string, { pin: string | undefined; tags: string[] }>(
    CHECK_CACHE_MS,
    CHECK_CACHE_MAX,
  );

  constructor(
    private readonly fleet: FleetDb,
    private readonly now: () => Date,
  ) {}

  async create(r: NewRollout): Promise<Rollout> {
    const id = r.id ?? `ro-${this.now().getTime().toString(36)}-${randomBytes(2).toString("hex")}`;
    if (!ROLLOUT_ID.test(id))
      throw new EosError("USAGE", `id: letters, digits and . _ - only: ${JSON.stringify(id)}`);
    const at = this.now().toISOString();
    const row: RolloutsTable = {
      id,
      image: r.image,
      version: r.version,
      previous: r.previous,
      filter: JSON.stringify(r.filter),
      waves: JSON.stringify(r.waves),
      soak_seconds: r.soak_seconds,
      error_threshold: r.error_threshold,
      success_threshold: r.success_threshold,
      state: "running",
      current_wave: 0,
      wave_started: at,
      reason: null,
      created: at,
      updated: at,
    };
    const done = await this.fleet.db
      .insertInto("rollouts")
      .values(row)
      .onConflict((oc) => oc.column("id").doNothing())
      .executeTakeFirst();
    if (Number(done.numInsertedOrUpdatedRows ?? 0) === 0)
      throw new EosError("REFUSED", `id: a rollout named ${id} exists already`);
    this.active.delete(r.image);
    return rolloutOf(row);
  }

  async list(image?: string): Promise<Rollout[]> {
    let q = this.fleet.db.selectFrom("rollouts").selectAll().orderBy("created", "desc").orderBy("id", "desc");
    if (image !== undefined) q = q.where("image", "=", image);
    return (await q.execute()).map(rolloutOf);
  }

  async get(id: string): Promise<Rollout> {
    const row = await this.fleet.db
      .selectFrom("rollouts")
      .selectAll()
      .where("id", "=", id)
      .executeTakeFirst();
    if (!row) throw new EosError("NOT_FOUND", `no rollout ${id}`, { hint: "os-update-server rollout list" });
    return rolloutOf(row);
  }

  /** pause, resume or abort, from the states that allow it; REFUSED (409) otherwise. */
  async act(id: string, action: RolloutAction, reason: string): Promise<Rollout> {
    const current = await this.get(id);
    if (!FROM[action].includes(current.state))
      throw new EosError("REFUSED", `rollout ${id} is ${current.state}: it cannot ${action}`, {
        hint: `${action} works on a ${FROM[action].join(" or ")} rollout`,
      });
    const at = this.now().toISOString();
    const r = await this.fleet.db
      .updateTable("rollouts")
      .set({
        state: TO[action],
        reason,
        updated: at,
        // A resumed wave soaks again: the errors that paused it are judged from now on.
        ...(action === "resume" ? { wave_started: at } : {}),
      })
      .where("id", "=", id)
      .where("state", "=", current.state)
      .executeTakeFirst();
    this.active.delete(current.image);
    if (Number(r.numUpdatedRows) === 0)
      throw new EosError("REFUSED", `rollout ${id} changed meanwhile`, { hint: "show it and try again" });
    return this.get(id);
  }

  async pin(device: string, version: string | undefined): Promise<void> {
    await this.fleet.db.deleteFrom("device_pins").where("device", "=", device).execute();
    if (version !== undefined)
      await this.fleet.db
        .insertInto("device_pins")
        .values({ device, version, created: this.now().toISOString() })
        .execute();
    this.forget(device);
  }

  /** Its pin or tags changed through this server: the next check reads them again. */
  forget(device: string): void {
    this.facts.delete(device);
  }

  /** The device's pin and tags, in one round trip. */
  private async factsOf(device: string): Promise<{ pin: string | undefined; tags: string[] }> {
    const at = this.now().getTime();
    const kept = this.facts.get(device, at);
    if (kept) return kept;
    const rows = await this.fleet.db
      .selectFrom("device_pins")
      .select([sql<string>`'pin'`.as("kind"), "version as value"])
      .where("device", "=", device)
      .unionAll((eb) =>
        eb
          .selectFrom("device_tags")
          .select([sql<string>`'tag'`.as("kind"), "tag as value"])
          .where("device", "=", device),
      )
      .execute();
    const facts = {
      pin: rows.find((r) => r.kind === "pin")?.value,
      tags: rows
        .filter((r) => r.kind === "tag")
        .map((r) => r.value)
        .sort(),
    };
    this.facts.set(device, facts, at);
    return facts;
  }

  async pinOf(device: string): Promise<string | undefined> {
    return (await this.factsOf(device)).pin;
  }

  async tagsOf(device: string): Promise<string[]> {
    return (await this.factsOf(device)).tags;
  }

  /** The image's rollouts that still assign versions (not completed), newest first. */
  private async activeOf(image: string): Promise<Rollout[]> {
    const at = this.now().getTime();
    const kept = this.active.get(image, at);
    if (kept) return kept;
    // A completed rollout no longer holds anyone back: its devices follow the newest version again.
    const rollouts = (await this.list(image)).filter((r) => r.state !== "completed");
    this.active.set(image, rollouts, at);
    return rollouts;
  }

  /** The version this device is told for `image`; undefined: no rollout or pin, the newest published. */
  async assignmentFor(
    device: string,
    image: string,
  ): Promise<{ assignment: Assignment; rollout?: Rollout } | undefined> {
    const { pin, tags } = await this.factsOf(device);
    const rollouts = await this.activeOf(image);
    const a = assign({ id: device, tags }, rollouts, pin);
    if (!a) return undefined;
    const rollout = "rollout" in a ? rollouts.find((r) => r.id === a.rollout) : undefined;
    return { assignment: a, ...(rollout ? { rollout } : {}) };
  }

  private async members(image: string): Promise<WaveMember[]> {
    const rows = await this.fleet.db
      .selectFrom("devices")
      .select(["id", "state", "running_version", "last_event_at"])
      .where("image", "=", image)
      .execute();
    const tags = new Map<string, string[]>();
    const tagRows = await this.fleet.db
      .selectFrom("device_tags")
      .innerJoin("devices", "devices.id", "device_tags.device")
      .select(["device_tags.device", "device_tags.tag"])
      .where("devices.image", "=", image)
      .execute();
    for (const t of tagRows) tags.set(t.device, [...(tags.get(t.device) ?? []), t.tag]);
    return rows.map((r) => ({ ...r, state: r.state as DeviceState, tags: tags.get(r.id) ?? [] }));
  }

  /** The wave's counts, for show. */
  async count(rollout: Rollout): Promise<ReturnType<typeof countWave>> {
    return countWave(rollout, await this.members(rollout.image));
  }

  /**
   * Judges the running rollouts (of one image, or all): pauses those whose
   * wave crossed its error threshold, moves on those that soaked and met
   * their success threshold. Returns what it did.
   */
  async evaluate(image?: string): Promise<Array<{ id: string; step: Step }>> {
    const done: Array<{ id: string; step: Step }> = [];
    const running = (await this.list(image)).filter((r) => r.state === "running");
    const members = new Map<string, WaveMember[]>();
    for (const r of running) {
      if (!members.has(r.image)) members.set(r.image, await this.members(r.image));
      const now = this.now();
      const step = evaluate(r, countWave(r, members.get(r.image) ?? []), now);
      if (step.kind === "none") continue;
      const at = now.toISOString();
      const set =
        step.kind === "pause"
          ? { state: "paused", reason: step.reason, updated: at }
          : step.kind === "complete"
            ? { state: "completed", reason: null, updated: at }
            : { current_wave: step.wave, wave_started: at, reason: null, updated: at };
      const r2 = await this.fleet.db
        .updateTable("rollouts")
        .set(set)
        .where("id", "=", r.id)
        .where("state", "=", "running")
        .where("current_wave", "=", r.current_wave)
        .executeTakeFirst();
      if (Number(r2.numUpdatedRows) > 0) {
        this.active.delete(r.image);
        done.push({ id: r.id, step });
      }
    }
    return done;
  }
}
