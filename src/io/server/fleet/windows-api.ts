/**
 * Maintenance windows set through the admin API (api.ts hands the route over):
 *   GET    /v1/admin/windows   the groups in force and where they come from (viewer)
 *   PUT    /v1/admin/windows   {"windows": [{tags, window}]} replaces them (operator)
 *   DELETE /v1/admin/windows   back to the config's serve.windows (operator)
 *   PUT    /v1/admin/windows/group?tags=a,b  {"window"} sets one group's window (operator)
 *   DELETE /v1/admin/windows/group?tags=a,b  removes that group (operator; 404 without one)
 *          (no tags: the default group, every device); both answer like GET
 * Validated like the config (core/config.ts windowGroupsSchema). Once set,
 * the database's groups win over the config's, on every server sharing the
 * database: each keeps them in memory (a check reads them on every manifest)
 * and reloads them at most RELOAD_MS later.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { z } from "zod";
import {
  MAX_WINDOW_GROUPS,
  windowGroupsSchema,
  windowSpecSchema,
  type WindowGroups,
} from "../../../core/config.ts";
import { EosError } from "../../../core/errors.ts";
import { normaliseTags } from "../../../core/fleet/admin.ts";
import { groupName, withGroupWindow, withoutGroup } from "../../../core/fleet/window.ts";
import { sendJson } from "../http-answer.ts";
import type { FleetDb } from "./db.ts";
import type { RouteHelpers } from "./rollout-api.ts";

const KEY = "windows";
const RELOAD_MS = 30_000;
const putBody = z.strictObject({ windows: windowGroupsSchema });
const GROUP_PATH = "/v1/admin/windows/group";
const groupBody = z.strictObject({ window: windowSpecSchema });

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

  /**
   * Changes the groups in force (the config's until the API set some) as one
   * transaction: two operators changing two groups at once keep both changes.
   * The row is made first, so that PostgreSQL has a row to lock even for the
   * first change; a change that throws leaves nothing behind.
   */
  async update(change: (groups: WindowGroups) => WindowGroups, by: string): Promise<void> {
    await this.fleet.db.transaction().execute(async (trx) => {
      const updated = this.now().toISOString();
      await trx
        .insertInto("settings")
        .values({ key: KEY, value: JSON.stringify(this.fromConfig), updated, updated_by: by })
        .onConflict((oc) => oc.column("key").doNothing())
        .execute();
      let select = trx.selectFrom("settings").selectAll().where("key", "=", KEY);
      if (this.fleet.kind === "postgres") select = select.forUpdate();
      const row = await select.executeTakeFirstOrThrow();
      const next = change(windowGroupsSchema.parse(JSON.parse(row.value)));
      await trx
        .updateTable("settings")
        .set({ value: JSON.stringify(next), updated, updated_by: by })
        .where("key", "=", KEY)
        .execute();
    });
    this.cached = undefined;
  }

  async reset(): Promise<void> {
    await this.fleet.db.deleteFrom("settings").where("key", "=", KEY).execute();
    this.cached = undefined;
  }
}

/** The group that ?tags=a,b names (none: the default group, every device). */
function groupTags(url: URL): string[] {
  const text = url.searchParams.get("tags") ?? "";
  return text === "" ? [] : normaliseTags(text.split(","));
}

async function groupRoute(
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  h: RouteHelpers,
  settings: WindowSettings,
): Promise<number> {
  h.method(["PUT", "DELETE"]);
  const who = await h.admin("operator");
  const tags = groupTags(url);
  if (req.method === "PUT") {
    const { window } = await h.body(groupBody);
    await settings.update((groups) => {
      const next = withGroupWindow(groups, tags, window);
      if (next.length > MAX_WINDOW_GROUPS)
        throw new EosError("USAGE", `windows: at most ${MAX_WINDOW_GROUPS} groups`, {
          hint: "clear a group first",
        });
      return next;
    }, who.name);
  } else {
    await settings.update((groups) => {
      const next = withoutGroup(groups, tags);
      if (next === undefined)
        throw new EosError("NOT_FOUND", `${groupName(tags)}: no maintenance window of its own`, {
          hint: "GET /v1/admin/windows (os-update-server windows list) shows the groups",
        });
      return next;
    }, who.name);
  }
  return sendJson(res, 200, await settings.current());
}

export async function windowsRoute(
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  h: RouteHelpers,
  settings: WindowSettings,
): Promise<number | undefined> {
  const path = url.pathname;
  if (path === GROUP_PATH) return groupRoute(req, res, url, h, settings);
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
