/**
 * Per-device identity (issue 15, item 6): a device exchanges the fleet's
 * enrolment key for a token of its own. Only the token's sha256 is kept;
 * a revoked token stays, with the time, so its device gets a clear answer
 * instead of an unknown-token one.
 */
import { type Kysely, type Migration } from "kysely";

export const identityMigrations: Record<string, Migration> = {
  "0003_device_tokens": {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable("device_tokens")
        .addColumn("device", "text", (c) => c.primaryKey())
        .addColumn("hash", "text", (c) => c.notNull().unique())
        .addColumn("enrolled_with", "text", (c) => c.notNull())
        .addColumn("created", "text", (c) => c.notNull())
        .addColumn("revoked", "text")
        .execute();
    },
  },
  "0004_settings": {
    // Server-wide settings the admin API changes (the maintenance windows): one JSON value per key.
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable("settings")
        .addColumn("key", "text", (c) => c.primaryKey())
        .addColumn("value", "text", (c) => c.notNull())
        .addColumn("updated", "text", (c) => c.notNull())
        .addColumn("updated_by", "text", (c) => c.notNull())
        .execute();
    },
  },
};
