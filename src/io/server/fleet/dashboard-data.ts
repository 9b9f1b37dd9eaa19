/**
 * What the dashboard and /metrics read: the inventory, the rollouts with
 * their waves' counts, the published images with their sizes, and the
 * versions devices reported over time, on either database.
 */
import { sql } from "kysely";
import { decodeDeltaIndex } from "../../../core/update/delta-index.ts";
import type { DeviceEvent } from "../../../core/fleet/events.ts";
import type { VersionPoint } from "../../../core/fleet/ui/chart.ts";
import { waveProgress, type ImageVersionRow, type WaveProgress } from "../../../core/fleet/ui/rollouts.ts";
import type { Rollout } from "../../../core/fleet/rollout.ts";
import type { ImageStore } from "../store.ts";
import type { FleetDb } from "./db.ts";
import type { DeviceView, FleetStore } from "./store.ts";
import type { RolloutStore } from "./rollouts.ts";
import { TtlCache } from "../../../core/fleet/ttl-cache.ts";

/** The chart reads at most this many of the newest version reports: bounded work per page. */
const MAX_POINTS = 20_000;
/** Versions listed per image on the images page. */
const MAX_VERSIONS = 20;
const VERSION_EVENTS = ["checked", "committed", "fell_back", "rolled_back"];
/**
 * One reading of a rollout's progress serves every page polling it for this
 * long: the database reads a rollout's devices at most once per this however
 * many pages are open, and requests at the same moment share one read. Below
 * the pages' poll interval, so a poll never shows older data than the page it
 * refreshes was loaded with.
 */
export const PROGRESS_FRESH_MS = 2000;
/** Readings kept at most (the oldest go first): ids asked for are bounded by nothing else. */
const PROGRESS_KEPT = 64;

export interface RolloutProgress {
  rollout: Rollout;
  waves: WaveProgress[];
}

export class DashboardData {
  private readonly progressRead = new TtlCache<string, Promise<RolloutProgress>>(
    PROGRESS_FRESH_MS,
    PROGRESS_KEPT,
  );

  constructor(
    private readonly fleet: FleetDb,
    readonly store: FleetStore,
    readonly rollouts: RolloutStore,
    readonly images: ImageStore,
  ) {}

  /** Which version each device said it ran, and when. */
  async versionPoints(): Promise<VersionPoint[]> {
    const rows = await this.fleet.db
      .selectFrom("events")
      .select(["device", "time", "data"])
      .where("type", "in", VERSION_EVENTS)
      .orderBy("seq", "desc")
      .limit(MAX_POINTS)
      .execute();
    const points: VersionPoint[] = [];
    for (const r of rows) {
      const e = JSON.parse(r.data) as DeviceEvent;
      if ("version" in e && e.version) points.push({ device: r.device, time: r.time, version: e.version });
    }
    return points;
  }

  async rolloutsWithWaves(): Promise<Array<{ rollout: Rollout; waves: WaveProgress[] }>> {
    const members = new Map<string, DeviceView[]>();
    const out: Array<{ rollout: Rollout; waves: WaveProgress[] }> = [];
    for (const rollout of await this.rollouts.list()) {
      if (!members.has(rollout.image))
        members.set(rollout.image, await this.store.listDevices({ image: rollout.image }));
      out.push({ rollout, waves: waveProgress(rollout, members.get(rollout.image) ?? []) });
    }
    return out;
  }

  /** One rollout and its waves' counts, read at most once per PROGRESS_FRESH_MS (`nowMs`: the caller's clock). */
  rolloutProgress(id: string, nowMs: number): Promise<RolloutProgress> {
    const kept = this.progressRead.get(id, nowMs);
    if (kept) return kept;
    const value = (async () => {
      const rollout = await this.rollouts.get(id);
      const members = await this.store.listDevices({ image: rollout.image });
      return { rollout, waves: waveProgress(rollout, members) };
    })();
    this.progressRead.set(id, value, nowMs);
    // A failed read (no such rollout, the database away) is not kept: the next poll asks again.
    value.catch(() => {
      this.progressRead.deleteWhere((kept) => kept === value);
    });
    return value;
  }

  /** One rollout, its waves' counts and the devices of its image (its page: read fresh, not shared). */
  async rolloutWithMembers(id: string): Promise<RolloutProgress & { members: DeviceView[] }> {
    const rollout = await this.rollouts.get(id);
    const members = await this.store.listDevices({ image: rollout.image });
    return { rollout, waves: waveProgress(rollout, members), members };
  }

  /** After this process changed a rollout: its next reading comes from the database. */
  forgetProgress(id: string): void {
    this.progressRead.delete(id);
  }

  async publishedImages(): Promise<Array<{ name: string; versions: ImageVersionRow[] }>> {
    const out: Array<{ name: string; versions: ImageVersionRow[] }> = [];
    for (const name of await this.images.list()) {
      const current = await this.images.current(name).catch(() => undefined);
      const versions: ImageVersionRow[] = [];
      for (const vid of (await this.images.history(name)).slice(0, MAX_VERSIONS)) {
        const v = await this.images.load(name, vid).catch(() => undefined);
        if (!v) continue;
        let deltas: ImageVersionRow["deltas"] = [];
        if (v.deltaIndexBytes) {
          try {
            deltas = decodeDeltaIndex(v.deltaIndexBytes).deltas.map((d) => ({
              from: d.from_version,
              bytes: d.size,
            }));
          } catch {
            deltas = [];
          }
        }
        versions.push({
          version: v.manifest.version,
          published: v.manifest.created,
          current: current?.vid === v.vid,
          signed: v.signatureBytes !== undefined,
          rootBytes: v.manifest.partitions.root.size,
          firmwareBytes: v.manifest.partitions.firmware?.size,
          deltas,
        });
      }
      out.push({ name, versions });
    }
    return out;
  }

  /** The database answers a query. */
  async ping(): Promise<void> {
    await sql`select 1`.execute(this.fleet.db);
  }
}
