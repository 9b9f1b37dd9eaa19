/**
 * Maintenance windows set through the admin API (api.ts hands the route over):
 *   GET    /v1/admin/windows   the groups in force and where they come from (viewer)
 *   PUT    /v1/admin/windows   {"windows": [{tags, window}]} replaces them (operator)
 *   DELETE /v1/admin/windows   back to the config's serve.windows (operator)
 * Validated like the config (core/config.ts windowGroupsSchema). Once set,
 * the database's groups win over the config's, on every server sharing the
 * database: each keeps them in memory (a check reads them on every manifest)
 * and reloads them at most RELOAD_MS later.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { z } from "zod";
import { windowGroupsSchema, type WindowGroups } from "../../../core/config.ts";
import { sendJson } from "../http-answer.ts";
import type { FleetDb } from "./db.ts";
import type { RouteHelpers } from "./rollout-api.ts";

const KEY = "windows";
const RELOAD_MS = 30_000;
const putBody = z.strictObject({ windows: windowGroupsSchema });

export interface WindowsInForce {
  windows: WindowGroups;
  source: "config" | "api";
  updated?: string;
  updated_by?: string;
}

export class WindowSettings {
  private cached: { value: WindowsInForce; at: number } | undefined;

  constructor(
    private readonly fleet: FleetDb,
    private readonly fromConfig: WindowGroups,
    private readonly now: () => Date,
  ) {}

  /** The groups in force; the cached ones when the database cannot be read (logged by the caller). */
  async current(): Promise<WindowsInForce> {
    const at = this.now().getTime();
    if (this.cached && at - this.cached.at < RELOAD_MS && at >= this.cached.at) return this.cached.value;
    const row = await this.fleet.db
      .selectFrom("settings")
      .selectAll()
      .where("key", "=", KEY)
      .executeTakeFirst();
    const value: WindowsInForce = row
      ? {
          // Validated again: a row written by hand must not turn into "any time" silently.
          windows: windowGroupsSchema.parse(JSON.parse(row.value)),
          source: "api",
          updated: row.updated,
          updated_by: row.updated_by,
        }
      : { windows: this.fromConfig, source: "config" };
    this.cached = { value, at };
    return value;
  }

  async set(windows: WindowGroups, by: string): Promise<void> {
    const row = {
      key: KEY,
      value: JSON.stringify(windows),
      updated: this.now().toISOString(),
      updated_by: by,
    };
    await this.fleet.db
      .insertInto("settings")
      .values(row)
      .onConflict((oc) =>
        oc.column("key").doUpdateSet({ value: row.value, updated: row.updated, updated_by: by }),
      )
      .execute();
    this.cached = undefined;
  }

  async reset(): Promise<void> {
    await this.fleet.db.deleteFrom("settings").where("key", "=", KEY).execute();
    this.cached = undefined;
  }
}

export async function windowsRoute(
  req: IncomingMessage,
  res: ServerResponse,
  path: string,
  h: RouteHelpers,
  settings: WindowSettings,
): Promise<number | undefined> {
  if (path !== "/v1/admin/windows") return undefined;
  h.method(["GET", "PUT", "DELETE"]);
  if (req.method === "GET") {
    await h.admin("viewer");
    return sendJson(res, 200, await settings.current());
  }
  const who = await h.admin("operator");
  if (req.method === "PUT") await settings.set((await h.body(putBody)).windows, who.name);
  else await settings.reset();
  return sendJson(res, 200, await settings.current());
}
