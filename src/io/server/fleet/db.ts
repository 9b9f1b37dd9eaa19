/**
 * The control plane's database: SQLite in the server's state directory by
 * default, PostgreSQL when `database:` names one. One query layer (kysely)
 * for both, so every query below it is written once; versioned migrations
 * run at every start (kysely's migrator takes a lock, so two servers
 * starting on one PostgreSQL migrate once).
 */
import { mkdir } from "node:fs/promises";
import { dirname } from "node:path";
import { Kysely, Migrator, PostgresDialect, SqliteDialect, type Generated } from "kysely";
import { EosError, errorMessage } from "../../../core/errors.ts";
import type { DeviceInventory } from "../../../core/fleet/events.ts";
import { fleetMigrations } from "./migrations.ts";

/** A device row: its inventory (core/fleet/events.ts), with the state as the text column stores it. */
export interface DevicesTable extends Omit<DeviceInventory, "state"> {
  id: string;
  state: string;
  first_seen: string;
  last_seen: string;
  dropped: number;
}

export interface DeviceTagsTable {
  device: string;
  tag: string;
}

export interface EventsTable {
  seq: Generated<number>;
  device: string;
  event_id: string;
  type: string;
  time: string;
  received: string;
  data: string;
}

export interface AdminTokensTable {
  name: string;
  role: string;
  hash: string;
  created: string;
}

export interface RolloutsTable {
  id: string;
  image: string;
  version: string;
  previous: string;
  filter: string;
  waves: string;
  soak_seconds: number;
  error_threshold: number;
  success_threshold: number;
  state: string;
  current_wave: number;
  wave_started: string;
  reason: string | null;
  created: string;
  updated: string;
}

export interface DevicePinsTable {
  device: string;
  version: string;
  created: string;
}

export interface DeviceTokensTable {
  device: string;
  hash: string;
  /** The enrolment key's name in the tokens directory. */
  enrolled_with: string;
  created: string;
  revoked: string | null;
}

export interface SettingsTable {
  key: string;
  /** JSON. */
  value: string;
  updated: string;
  /** The admin token's name that set it. */
  updated_by: string;
}

/** The drop total the server last took from one of a device's report queues (core/fleet/report-queue.ts). */
export interface DeviceDropsTable {
  device: string;
  queue: string;
  total: number;
  updated: string;
}

export interface FleetSchema {
  device_drops: DeviceDropsTable;
  settings: SettingsTable;
  device_tokens: DeviceTokensTable;
  rollouts: RolloutsTable;
  device_pins: DevicePinsTable;
  devices: DevicesTable;
  device_tags: DeviceTagsTable;
  events: EventsTable;
  admin_tokens: AdminTokensTable;
}

export type DbKind = "sqlite" | "postgres";

export interface FleetDb {
  db: Kysely<FleetSchema>;
  kind: DbKind;
  /** Where it is, without a password: for logs. */
  describe: string;
  /** Statements sent so far, BEGIN and COMMIT included: each is a round trip on PostgreSQL. */
  readonly stats: { queries: number };
  close(): Promise<void>;
}

/** kysely's log hook, counting every statement (it sees those of transactions too). */
function counted(): { stats: { queries: number }; log: () => void } {
  const stats = { queries: 0 };
  return { stats, log: () => void stats.queries++ };
}

export const DEFAULT_STATE_DIR = "/var/lib/os-update-server";
export const SQLITE_FILE = "fleet.sqlite";
const MAX_PREPARED = 256;

/** `postgres://…` / `postgresql://…` → PostgreSQL; `sqlite:PATH` or an absolute path → SQLite there. */
export function parseDatabase(spec: string): { kind: DbKind; target: string } {
  if (/^postgres(ql)?:\/\//.test(spec)) return { kind: "postgres", target: spec };
  const path = spec.startsWith("sqlite:") ? spec.slice("sqlite:".length) : spec;
  if (!path.startsWith("/"))
    throw new EosError(
      "CONFIG",
      `database: ${JSON.stringify(spec)} is neither postgres://… nor an absolute path`,
      {
        hint: "database: postgres://USER@HOST:PORT/DB, or sqlite:/var/lib/os-update-server/fleet.sqlite",
      },
    );
  return { kind: "sqlite", target: path };
}

function withoutPassword(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "postgres://(unparsable)";
  }
}

async function openSqlite(path: string): Promise<FleetDb> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  let Database: typeof import("better-sqlite3");
  try {
    // Loaded only here: a native module, which a server on PostgreSQL never needs.
    Database = (await import("better-sqlite3")).default;
  } catch (error) {
    throw new EosError("NOT_FOUND", `SQLite is not available here: ${errorMessage(error)}`, {
      hint: "install better-sqlite3 next to EOS, or set database: postgres://… in the server config",
    });
  }
  const sqlite = new Database(path);
  // WAL: readers (the admin API) do not wait for the writer (device reports), and a crash loses no commit.
  sqlite.pragma("journal_mode = WAL");
  sqlite.pragma("busy_timeout = 5000");
  sqlite.pragma("synchronous = NORMAL");
  // kysely prepares every query anew; preparing was a fifth of the server's time per report
  // (bench/fleet.ts). The driver runs one query at a time, so a prepared statement can be reused.
  const prepared = new Map<string, ReturnType<typeof sqlite.prepare>>();
  const database = {
    close: () => void sqlite.close(),
    prepare(sql: string) {
      let statement = prepared.get(sql);
      if (!statement) {
        statement = sqlite.prepare(sql);
        // Bounded: an IN list of another length is another text.
        if (prepared.size < MAX_PREPARED) prepared.set(sql, statement);
      }
      return statement;
    },
  };
  const { stats, log } = counted();
  const db = new Kysely<FleetSchema>({ dialect: new SqliteDialect({ database }), log });
  return { db, kind: "sqlite", describe: `sqlite:${path}`, stats, close: () => db.destroy() };
}

async function openPostgres(url: string): Promise<FleetDb> {
  const pg = (await import("pg")).default;
  const pool = new pg.Pool({ connectionString: url, max: 10, connectionTimeoutMillis: 10_000 });
  // An idle connection the server drops must not take the update server down with it.
  pool.on("error", () => undefined);
  const { stats, log } = counted();
  const db = new Kysely<FleetSchema>({ dialect: new PostgresDialect({ pool }), log });
  return { db, kind: "postgres", describe: withoutPassword(url), stats, close: () => db.destroy() };
}

/** Opens the database and brings its schema up to date. */
export async function openFleetDb(spec: string): Promise<FleetDb> {
  const { kind, target } = parseDatabase(spec);
  const fleet = kind === "sqlite" ? await openSqlite(target) : await openPostgres(target);
  try {
    const migrator = new Migrator({
      db: fleet.db,
      provider: { getMigrations: () => Promise.resolve(fleetMigrations(kind)) },
    });
    const { error, results } = await migrator.migrateToLatest();
    if (error) {
      const failed = results?.find((r) => r.status === "Error")?.migrationName ?? "?";
      throw new EosError("CONFIG", `${fleet.describe}: migration ${failed} failed: ${errorMessage(error)}`, {
        hint: "is the database reachable and writable by this user?",
      });
    }
  } catch (error) {
    await fleet.close().catch(() => undefined);
    if (error instanceof EosError) throw error;
    throw new EosError("CONFIG", `${fleet.describe}: cannot open the database: ${errorMessage(error)}`, {
      hint: "is the database reachable and writable by this user?",
    });
  }
  return fleet;
}
