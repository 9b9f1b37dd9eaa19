/**
 * The inventory and event history behind the control plane's API: devices
 * register on their first report, each batch is stored in one transaction
 * (its events once each, however often a device re-sends them), and the
 * admin queries read from the same tables on either database.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { EosError } from "../../../core/errors.ts";
import { isRole, type DeviceFilter, type Role } from "../../../core/fleet/admin.ts";
import {
  applyBatch,
  dropsAdded,
  EMPTY_INVENTORY,
  type Drops,
  type DeviceEvent,
  type DeviceInventory,
  type DeviceState,
  type EventBatch,
} from "../../../core/fleet/events.ts";
import type { Transaction } from "kysely";
import type { DevicesTable, FleetDb, FleetSchema } from "./db.ts";

/** Report queues whose drop totals are kept per device (a /run queue is new at each boot). */
const DROP_QUEUES_KEPT = 16;
/** The devices' drop column is 32-bit on PostgreSQL. */
const MAX_DROPPED = 2 ** 31 - 1;

export interface DeviceView extends DeviceInventory {
  id: string;
  tags: string[];
  first_seen: string;
  last_seen: string;
  /** Events the device's queue dropped while it could not reach the server. */
  dropped: number;
}

export interface StoredEvent {
  seq: number;
  type: string;
  time: string;
  received: string;
  data: DeviceEvent;
}

const hashOf = (token: string) => createHash("sha256").update(token, "utf8").digest("hex");

function inventoryOf(row: DevicesTable | undefined): DeviceInventory {
  if (!row) return { ...EMPTY_INVENTORY };
  const { id: _id, first_seen: _f, last_seen: _l, dropped: _d, ...inv } = row;
  return { ...inv, state: inv.state as DeviceState };
}

export class FleetStore {
  constructor(
    private readonly fleet: FleetDb,
    private readonly now: () => Date,
  ) {}

  get describe(): string {
    return this.fleet.describe;
  }

  /** Stores a device's batch; returns how many events were new. */
  async record(device: string, batch: EventBatch): Promise<{ stored: number; duplicates: number }> {
    const received = this.now().toISOString();
    return this.fleet.db.transaction().execute(async (trx) => {
      // On PostgreSQL two batches of one device at once must not both read the old row.
      const read = () => {
        const q = trx.selectFrom("devices").selectAll().where("id", "=", device);
        return (this.fleet.kind === "postgres" ? q.forUpdate() : q).executeTakeFirst();
      };
      // Enrolment registered the device already, nearly always: one round trip, no row written twice.
      let row = await read();
      if (!row) {
        await trx
          .insertInto("devices")
          .values({ id: device, state: "unknown", first_seen: received, last_seen: received, dropped: 0 })
          .onConflict((oc) => oc.column("id").doNothing())
          .execute();
        row = await read();
        if (!row) throw new EosError("IO", `device ${device}: its row vanished while a report was stored`);
      }
      // All events in one statement; those it returns were new (a re-sent one conflicts and is not).
      const inserted = await trx
        .insertInto("events")
        .values(
          batch.events.map((event) => ({
            device,
            event_id: event.id,
            type: event.type,
            time: new Date(Date.parse(event.time)).toISOString(),
            received,
            data: JSON.stringify(event),
          })),
        )
        .onConflict((oc) => oc.columns(["device", "event_id"]).doNothing())
        .returning("event_id")
        .execute();
      const newIds = new Set(inserted.map((r) => r.event_id));
      // An id twice in one batch is stored once: only its first copy is new.
      const fresh = batch.events.filter((e) => newIds.delete(e.id));
      const inv = applyBatch(inventoryOf(row), { ...batch, events: fresh });
      const added = dropsAdded(
        batch,
        batch.drops && (await this.takeDrops(trx, device, batch.drops, received)),
      );
      const dropped = Math.min(Number(row.dropped) + added, MAX_DROPPED);
      await trx
        .updateTable("devices")
        .set({ ...inv, last_seen: received, dropped })
        .where("id", "=", device)
        .execute();
      return { stored: fresh.length, duplicates: batch.events.length - fresh.length };
    });
  }

  /**
   * Keeps the newest total of one of the device's queues; returns the one
   * kept before (undefined for a queue not seen). The device's row is locked
   * (record's read), so two batches of one device take their turns here.
   * Only the queues the device sent from most recently are kept (a queue
   * with drops sends its total with every batch): an older one comes back
   * (its whole total counted again) only after DROP_QUEUES_KEPT others.
   */
  private async takeDrops(
    trx: Transaction<FleetSchema>,
    device: string,
    drops: Drops,
    received: string,
  ): Promise<number | undefined> {
    const seen = await trx
      .selectFrom("device_drops")
      .select("total")
      .where("device", "=", device)
      .where("queue", "=", drops.queue)
      .executeTakeFirst();
    const previous = seen === undefined ? undefined : Number(seen.total);
    const total = Math.max(previous ?? 0, drops.total);
    await trx
      .insertInto("device_drops")
      .values({ device, queue: drops.queue, total, updated: received })
      .onConflict((oc) => oc.columns(["device", "queue"]).doUpdateSet({ total, updated: received }))
      .execute();
    if (previous !== undefined) return previous;
    const old = await trx
      .selectFrom("device_drops")
      .select("queue")
      .where("device", "=", device)
      .orderBy("updated", "desc")
      .orderBy("queue")
      .offset(DROP_QUEUES_KEPT)
      .limit(1000)
      .execute();
    if (old.length > 0)
      await trx
        .deleteFrom("device_drops")
        .where("device", "=", device)
        .where(
          "queue",
          "in",
          old.map((r) => r.queue),
        )
        .execute();
    return undefined;
  }

  async listDevices(filter: DeviceFilter): Promise<DeviceView[]> {
    let q = this.fleet.db.selectFrom("devices").selectAll().orderBy("id");
    if (filter.version !== undefined) q = q.where("running_version", "=", filter.version);
    if (filter.state !== undefined) q = q.where("state", "=", filter.state);
    if (filter.image !== undefined) q = q.where("image", "=", filter.image);
    if (filter.tag !== undefined) {
      const tag = filter.tag;
      q = q.where("id", "in", (eb) => eb.selectFrom("device_tags").select("device").where("tag", "=", tag));
    }
    const rows = await q.execute();
    const tags = await this.tagsOf(rows.map((r) => r.id));
    return rows.map((row) => ({ ...row, state: row.state as DeviceState, tags: tags.get(row.id) ?? [] }));
  }

  private async tagsOf(ids: string[]): Promise<Map<string, string[]>> {
    const out = new Map<string, string[]>();
    // Chunks: SQLite allows a bounded number of parameters per statement.
    for (let i = 0; i < ids.length; i += 500) {
      const rows = await this.fleet.db
        .selectFrom("device_tags")
        .select(["device", "tag"])
        .where("device", "in", ids.slice(i, i + 500))
        .orderBy("tag")
        .execute();
      for (const r of rows) out.set(r.device, [...(out.get(r.device) ?? []), r.tag]);
    }
    return out;
  }

  async device(
    id: string,
    limit: number,
  ): Promise<{ device: DeviceView; events: StoredEvent[] } | undefined> {
    const row = await this.fleet.db.selectFrom("devices").selectAll().where("id", "=", id).executeTakeFirst();
    if (!row) return undefined;
    const tags = (await this.tagsOf([id])).get(id) ?? [];
    // The newest `limit` events, shown oldest first.
    const events = await this.fleet.db
      .selectFrom("events")
      .select(["seq", "type", "time", "received", "data"])
      .where("device", "=", id)
      .orderBy("seq", "desc")
      .limit(limit)
      .execute();
    return {
      device: { ...row, state: row.state as DeviceState, tags },
      events: events.reverse().map((e) => ({ ...e, data: JSON.parse(e.data) as DeviceEvent })),
    };
  }

  async setTags(id: string, tags: string[]): Promise<void> {
    await this.fleet.db.transaction().execute(async (trx) => {
      const found = await trx.selectFrom("devices").select("id").where("id", "=", id).executeTakeFirst();
      if (!found) throw new EosError("NOT_FOUND", `no device ${id} in the inventory`);
      await trx.deleteFrom("device_tags").where("device", "=", id).execute();
      if (tags.length > 0)
        await trx
          .insertInto("device_tags")
          .values(tags.map((tag) => ({ device: id, tag })))
          .execute();
    });
  }

  /** A new admin token for NAME with ROLE; returned once, stored as its sha256. */
  async addAdminToken(name: string, role: Role): Promise<string> {
    const token = `eosadm_${randomBytes(32).toString("base64url")}`;
    const r = await this.fleet.db
      .insertInto("admin_tokens")
      .values({ name, role, hash: hashOf(token), created: this.now().toISOString() })
      .onConflict((oc) => oc.column("name").doNothing())
      .executeTakeFirst();
    if (Number(r.numInsertedOrUpdatedRows ?? 0) === 0)
      throw new EosError("REFUSED", `an admin token named ${name} exists already`, {
        hint: "revoke it first, or choose another name",
      });
    return token;
  }

  async revokeAdminToken(name: string): Promise<void> {
    const r = await this.fleet.db.deleteFrom("admin_tokens").where("name", "=", name).executeTakeFirst();
    if (Number(r.numDeletedRows) === 0) throw new EosError("NOT_FOUND", `no admin token named ${name}`);
  }

  async listAdminTokens(): Promise<Array<{ name: string; role: string; created: string }>> {
    return this.fleet.db
      .selectFrom("admin_tokens")
      .select(["name", "role", "created"])
      .orderBy("name")
      .execute();
  }

  async authenticateAdmin(token: string): Promise<{ name: string; role: Role } | undefined> {
    const hash = hashOf(token);
    const row = await this.fleet.db
      .selectFrom("admin_tokens")
      .select(["name", "role", "hash"])
      .where("hash", "=", hash)
      .executeTakeFirst();
    // The lookup is by hash already; compare again in constant time so a near miss costs the same.
    if (!row || !timingSafeEqual(Buffer.from(row.hash), Buffer.from(hash)) || !isRole(row.role))
      return undefined;
    return { name: row.name, role: row.role };
  }

  async close(): Promise<void> {
    await this.fleet.close();
  }
}
