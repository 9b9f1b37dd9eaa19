/**
 * Which database the control plane uses, for `serve` and for the commands
 * that work on it directly (`admin-token`): `database:` from the server
 * config, else SQLite in the state directory (--state-dir, state_dir:, or
 * /var/lib/os-update-server).
 */
import { join } from "node:path";
import { EosError } from "../../../core/errors.ts";
import { sysPath, type Context } from "../../context.ts";
import type { Logger } from "../../log.ts";
import { loadServerConfig, type ServerSetup } from "../server-config.ts";
import { enrolLimiter, enrolLimits } from "./enrol-limit.ts";
import { reportLimiter, reportLimits } from "./report-limit.ts";
import { WindowSettings } from "./windows-api.ts";
import { controlPlane, type ControlPlane } from "./api.ts";
import { DEFAULT_STATE_DIR, openFleetDb, SQLITE_FILE } from "./db.ts";
import { FleetStore } from "./store.ts";
import { RolloutStore } from "./rollouts.ts";
import { DeviceTokenStore } from "./device-tokens.ts";
import { DashboardData } from "./dashboard-data.ts";
import type { ImageStore } from "../store.ts";
import { errorMessage } from "../../../core/errors.ts";

export function databaseSpec(ctx: Context, setup: ServerSetup, stateDir: string | undefined): string {
  if (setup.config.database !== undefined) return setup.config.database;
  const dir = stateDir ?? setup.config.state_dir ?? sysPath(ctx, DEFAULT_STATE_DIR);
  return `sqlite:${join(dir, SQLITE_FILE)}`;
}

export async function openFleetStore(
  ctx: Context,
  setup: ServerSetup,
  stateDir: string | undefined,
): Promise<FleetStore> {
  return new FleetStore(await openFleetDb(databaseSpec(ctx, setup, stateDir)), ctx.now);
}

/** For a command that works on the database directly: the store is closed again whatever `fn` does. */
export async function withFleetStore<T>(
  ctx: Context,
  o: { config?: string | undefined; stateDir?: string | undefined },
  fn: (store: FleetStore) => Promise<T>,
): Promise<T> {
  const store = await openFleetStore(ctx, await loadServerConfig(ctx, o.config, false), o.stateDir);
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

/**
 * The store and its routes for `serve`. Without SQLite's native module (a
 * host whose Node cannot load it) the server still serves images, and says
 * loudly that the control plane is off; any other database failure stops it.
 */
export async function openControlPlane(
  ctx: Context,
  setup: ServerSetup,
  stateDir: string | undefined,
  logger: Logger,
  images: ImageStore,
): Promise<
  | {
      store: FleetStore;
      rollouts: RolloutStore;
      control: ControlPlane;
      data: DashboardData;
      windows: WindowSettings;
    }
  | undefined
> {
  try {
    const db = await openFleetDb(databaseSpec(ctx, setup, stateDir));
    const store = new FleetStore(db, ctx.now);
    const rollouts = new RolloutStore(db, ctx.now);
    const windows = new WindowSettings(db, setup.config.serve?.windows ?? [], ctx.now);
    logger.info("control plane", { database: store.describe });
    const onError = (error: unknown) =>
      logger.error("judging rollouts failed", { error: errorMessage(error) });
    return {
      store,
      rollouts,
      control: controlPlane(
        store,
        new DeviceTokenStore(db, ctx.now),
        { store: rollouts, images, onError },
        enrolLimiter(enrolLimits(setup.config.serve?.enrol_limit), ctx.now),
        windows,
        reportLimiter(reportLimits(setup.config.serve?.report_limit), ctx.now),
      ),
      windows,
      data: new DashboardData(db, store, rollouts, images),
    };
  } catch (error) {
    if (error instanceof EosError && error.code === "NOT_FOUND") {
      logger.error("control plane off: device reports and the admin API answer 404", {
        error: error.message,
        hint: error.hint,
      });
      return undefined;
    }
    throw error;
  }
}
