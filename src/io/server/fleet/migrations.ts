/**
 * The control plane's schema, one migration per change, never edited once
 * released: a server starting on an older database runs the ones it lacks.
 * Times are ISO-8601 UTC text, which sorts and compares the same in SQLite
 * and PostgreSQL.
 */
import { type Kysely, type Migration } from "kysely";
import type { DbKind } from "./db.ts";
import { identityMigrations } from "./migrations-identity.ts";

export function fleetMigrations(kind: DbKind): Record<string, Migration> {
  return {
    "0001_inventory": {
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable("devices")
          .addColumn("id", "text", (c) => c.primaryKey())
          .addColumn("image", "text")
          .addColumn("architecture", "text")
          .addColumn("running_slot", "text")
          .addColumn("running_version", "text")
          .addColumn("other_version", "text")
          .addColumn("root_sha256", "text")
          .addColumn("registry", "text")
          .addColumn("state", "text", (c) => c.notNull())
          .addColumn("last_event", "text")
          .addColumn("last_event_at", "text")
          .addColumn("first_seen", "text", (c) => c.notNull())
          .addColumn("last_seen", "text", (c) => c.notNull())
          .addColumn("dropped", "integer", (c) => c.notNull().defaultTo(0))
          .execute();
        await db.schema
          .createTable("device_tags")
          .addColumn("device", "text", (c) => c.notNull())
          .addColumn("tag", "text", (c) => c.notNull())
          .addPrimaryKeyConstraint("device_tags_pk", ["device", "tag"])
          .execute();
        await db.schema.createIndex("device_tags_tag").on("device_tags").column("tag").execute();
        // seq orders a device's history as it arrived; the two dialects spell an auto-increment differently.
        await db.schema
          .createTable("events")
          .addColumn("seq", kind === "postgres" ? "serial" : "integer", (c) =>
            kind === "postgres" ? c.primaryKey() : c.primaryKey().autoIncrement(),
          )
          .addColumn("device", "text", (c) => c.notNull())
          .addColumn("event_id", "text", (c) => c.notNull())
          .addColumn("type", "text", (c) => c.notNull())
          .addColumn("time", "text", (c) => c.notNull())
          .addColumn("received", "text", (c) => c.notNull())
          .addColumn("data", "text", (c) => c.notNull())
          .addUniqueConstraint("events_device_event_id", ["device", "event_id"])
          .execute();
        await db.schema.createIndex("events_device_seq").on("events").columns(["device", "seq"]).execute();
        await db.schema
          .createTable("admin_tokens")
          .addColumn("name", "text", (c) => c.primaryKey())
          .addColumn("role", "text", (c) => c.notNull())
          .addColumn("hash", "text", (c) => c.notNull().unique())
          .addColumn("created", "text", (c) => c.notNull())
          .execute();
      },
    },
    "0002_rollouts": {
      async up(db: Kysely<unknown>) {
        // Filter and waves are small JSON documents: read whole, never queried inside.
        await db.schema
          .createTable("rollouts")
          .addColumn("id", "text", (c) => c.primaryKey())
          .addColumn("image", "text", (c) => c.notNull())
          .addColumn("version", "text", (c) => c.notNull())
          .addColumn("previous", "text", (c) => c.notNull())
          .addColumn("filter", "text", (c) => c.notNull())
          .addColumn("waves", "text", (c) => c.notNull())
          .addColumn("soak_seconds", "integer", (c) => c.notNull())
          .addColumn("error_threshold", "double precision", (c) => c.notNull())
          .addColumn("success_threshold", "double precision", (c) => c.notNull())
          .addColumn("state", "text", (c) => c.notNull())
          .addColumn("current_wave", "integer", (c) => c.notNull())
          .addColumn("wave_started", "text", (c) => c.notNull())
          .addColumn("reason", "text")
          .addColumn("created", "text", (c) => c.notNull())
          .addColumn("updated", "text", (c) => c.notNull())
          .execute();
        await db.schema.createIndex("rollouts_image").on("rollouts").columns(["image", "created"]).execute();
        await db.schema
          .createTable("device_pins")
          .addColumn("device", "text", (c) => c.primaryKey())
          .addColumn("version", "text", (c) => c.notNull())
          .addColumn("created", "text", (c) => c.notNull())
          .execute();
      },
    },
    ...identityMigrations,
    "0005_device_drops": {
      // One row per report queue of a device that sent a drop total: a device's /run queue and its
      // registry queue may take turns (a boot without the registry), and neither's total may count twice.
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable("device_drops")
          .addColumn("device", "text", (c) => c.notNull())
          .addColumn("queue", "text", (c) => c.notNull())
          .addColumn("total", "integer", (c) => c.notNull())
          .addColumn("updated", "text", (c) => c.notNull())
          .addPrimaryKeyConstraint("device_drops_pk", ["device", "queue"])
          .execute();
      },
    },
  };
}
