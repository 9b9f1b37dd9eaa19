/**
 * Retention of published versions, after each fetch of an image (and each
 * round of `fetch --daemon`): the plan comes from src/core/server/retention.ts,
 * the fleet's needs from the control plane's database. Without that database
 * (the fleet side never ran) nothing is in use; when it cannot be read,
 * nothing is removed: a version a device may still need is never guessed away.
 */
import { existsSync } from "node:fs";
import { errorMessage } from "../../core/errors.ts";
import { planRetention, type PublishedEntry, type VersionsInUse } from "../../core/server/retention.ts";
import type { ServerImage } from "../../core/config.ts";
import type { Context } from "../context.ts";
import type { Lock } from "../lock.ts";
import type { Logger } from "../log.ts";
import { DEFAULT_DELTA_FROM } from "./fetch.ts";
import { openFleetDb, parseDatabase, type FleetDb } from "./fleet/db.ts";
import { versionsInUse } from "./fleet/in-use.ts";
import { databaseSpec } from "./fleet/open.ts";
import type { ImageStore } from "./store.ts";
import type { ServerSetup } from "./server-config.ts";

export interface FleetNeeds {
  /** undefined: the database could not be read, so nothing may be removed. */
  inUse(image: string): Promise<VersionsInUse | undefined>;
  close(): Promise<void>;
}

export async function openFleetNeeds(ctx: Context, setup: ServerSetup, logger: Logger): Promise<FleetNeeds> {
  const spec = databaseSpec(ctx, setup, undefined);
  const { kind, target } = parseDatabase(spec);
  if (kind === "sqlite" && !existsSync(target)) {
    return { inUse: async () => new Map(), close: async () => undefined };
  }
  let fleet: FleetDb | undefined;
  try {
    fleet = await openFleetDb(spec);
  } catch (error) {
    logger.warn("retention: the fleet database cannot be read; no version is removed", {
      database: spec.replace(/\/\/[^@/]*@/, "//…@"),
      error: errorMessage(error),
    });
  }
  return {
    inUse: async (image) => {
      if (!fleet) return undefined;
      try {
        return await versionsInUse(fleet, image);
      } catch (error) {
        logger.warn("retention: the fleet database cannot be read; no version is removed", {
          image,
          error: errorMessage(error),
        });
        return undefined;
      }
    },
    close: async () => fleet?.close(),
  };
}

/** Versions the store keeps for this image: its `keep`, never fewer than its delta sources need. */
export function keptCount(image: ServerImage): number {
  const deltaFrom = image.delta_from ?? DEFAULT_DELTA_FROM;
  return Math.max(image.keep ?? 0, deltaFrom + 1);
}

/** Removes the versions of `image` that neither the count nor the fleet keeps; their versions. */
export async function pruneImage(
  store: ImageStore,
  image: ServerImage,
  needs: FleetNeeds,
  logger: Logger,
  /** Takes the image's lock (default the store's), as fetch does. */
  lockImage: (name: string) => Promise<Lock> = (name) => store.lock(name),
): Promise<string[]> {
  const inUse = await needs.inUse(image.name);
  if (!inUse) return [];
  const lock = await lockImage(image.name);
  try {
    const history: PublishedEntry[] = [];
    for (const vid of await store.history(image.name)) {
      const version = await store.load(image.name, vid).then(
        (v) => v.manifest.version,
        () => "",
      );
      history.push({ vid, version });
    }
    const plan = planRetention(history, keptCount(image), inUse);
    for (const entry of plan.drop) {
      await store.removeVersion(image.name, entry.vid);
      logger.info("removed an old version", { image: image.name, version: entry.version, vid: entry.vid });
    }
    for (const entry of plan.keep.filter((e) => inUse.get(e.version) === e.why))
      logger.info("kept an old version", { image: image.name, version: entry.version, why: entry.why });
    return plan.drop.map((e) => e.version);
  } finally {
    await lock.release();
  }
}
