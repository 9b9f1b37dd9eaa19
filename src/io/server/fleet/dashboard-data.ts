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

/** The chart reads at most this many of the newest version reports: bounded work per page. */
const MAX_POINTS = 20_000;
/** Versions listed per image on the images page. */
const MAX_VERSIONS = 20;
const VERSION_EVENTS = ["checked", "committed", "fell_back", "rolled_back"];

export class DashboardData {
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
