/**
 * The update server's fetch job over every configured image: once (the
 * original os-fetch), or as a daemon that fetches each image at its own
 * interval (the original os-update-daemon timers) until a signal stops it.
 * A failure of one image is logged with its name and never stops another.
 */
import type { ServerImage } from "../../core/config.ts";
import { EosError, errorMessage } from "../../core/errors.ts";
import { matchConfiguredImage } from "../../core/server/published-name.ts";
import { sysPath, type Context } from "../context.ts";
import { loadTrustedKeys } from "../keys.ts";
import { jsonLogger } from "../log.ts";
import { progress } from "../progress.ts";
import { limitsFrom } from "../watchdog.ts";
import { fetchAndPublish, type FetchOptions, type FetchOutcome } from "./fetch.ts";
import { openFleetNeeds, pruneImage } from "./retention.ts";
import { parseDatabase } from "./fleet/db.ts";
import { databaseSpec } from "./fleet/open.ts";
import { DEFAULT_PUBLISH_LOCK_WAIT_MS, postgresPublishLocks, PublishBusy } from "./fleet/publish-lock.ts";
import type { Lock } from "../lock.ts";
import { DEFAULT_KEYS_DIR, loadServerConfig } from "./server-config.ts";
import { openImageStore } from "./store.ts";

const DEFAULT_INTERVAL_S = 3600;

export type FetchResult =
  | FetchOutcome
  | { name: string; status: "failed"; error: string }
  /** Another host's fetch held the image's publish lock past the wait (fleet/publish-lock.ts). */
  | { name: string; status: "skipped"; error: string };

export interface FetchAllOptions {
  config?: string | undefined;
  imagesDir?: string | undefined;
  /** Only these images (names as configured, `.raw` optional; or a path or URL of one). */
  images?: string[] | undefined;
  daemon?: boolean | undefined;
  /**
   * No configured images is a state, not a mistake (os-fetch's --timers: a
   * new server image boots with none, and its timers are all to be stopped).
   */
  emptyOk?: boolean | undefined;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

/** Fetches the configured images; with `daemon`, keeps fetching until ctx.signal aborts (then returns []). */
export async function fetchAll(ctx: Context, o: FetchAllOptions): Promise<FetchResult[]> {
  const setup = await loadServerConfig(ctx, o.config, true);
  const { config, path } = setup;
  let images: ServerImage[] = config.update;
  if (o.images?.length) {
    const all = images;
    const missing = o.images.filter((n) => matchConfiguredImage(n, all) === undefined);
    if (missing.length)
      throw new EosError("CONFIG", `${path}: no image named ${missing.join(", ")} under update:`, {
        hint: "--image takes a configured name, its path in the image directory, or its origin URL",
      });
    const wanted = new Set(o.images.map((n) => matchConfiguredImage(n, all)));
    images = images.filter((i) => wanted.has(i.name));
  }
  if (images.length === 0 && o.emptyOk && !o.images?.length && !o.daemon) {
    ctx.stderr.write(`os-update-server: ${path}: update: lists no images: nothing to fetch\n`);
    return [];
  }
  if (images.length === 0) throw new EosError("CONFIG", `${path}: update: lists no images`);
  const needKeys = images.some((i) => !i.insecure);
  const keyPaths = config.keys ?? [sysPath(ctx, DEFAULT_KEYS_DIR)];
  const trustedKeys = needKeys ? await loadTrustedKeys(keyPaths) : [];
  if (needKeys && trustedKeys.length === 0) {
    throw new EosError("CONFIG", `${path}: keys: no trusted release keys found in ${keyPaths.join(", ")}`, {
      hint: "list release.pub files under keys:, or set insecure: true on an image to publish it unsigned",
    });
  }
  const store = await openImageStore(ctx, setup, o.imagesDir);
  // Object storage that cannot be used fails every image the same way: said once, before any download.
  if (setup.config.storage !== undefined) await store.check();
  const logger = jsonLogger(ctx.stderr, ctx.now);
  const lockImage = publishLock(ctx, setup, store, logger);
  const options: FetchOptions = {
    trustedKeys,
    logger,
    signal: ctx.signal,
    now: ctx.now,
    progress: (label, total) =>
      progress(ctx.stderr, label, total, { interactive: ctx.interactive, plainEverySeconds: 10 }),
    proc: ctx.proc,
    limits: limitsFrom(config),
    lock: lockImage,
  };
  const needs = await openFleetNeeds(ctx, setup, logger);
  const fetchOne = async (image: ServerImage): Promise<FetchResult> => {
    try {
      const outcome = await fetchAndPublish(store, image, options);
      // Also when nothing new came: a version the fleet has left since the last round may go now.
      await pruneImage(store, image, needs, logger, lockImage).catch((error: unknown) => {
        // Another host's fetch of it prunes after its publish: nothing is lost by leaving it to that one.
        if (!(error instanceof PublishBusy)) throw error;
      });
      return outcome;
    } catch (error) {
      if (error instanceof PublishBusy) {
        logger.warn("fetch skipped: another fetch is publishing", {
          image: image.name,
          error: error.message,
        });
        return { name: image.name, status: "skipped", error: error.message };
      }
      const code = error instanceof EosError ? error.code : "INTERNAL";
      logger.error("fetch failed", { image: image.name, code, error: errorMessage(error) });
      return { name: image.name, status: "failed", error: errorMessage(error) };
    }
  };
  // Each image on its own: a failed or stalled origin never delays another image.
  try {
    if (!o.daemon) return await Promise.all(images.map(fetchOne));
    logger.info("fetch daemon started", { images: images.length });
    await Promise.all(
      images.map(async (image) => {
        const interval = (image.interval ?? config.interval ?? DEFAULT_INTERVAL_S) * 1000;
        while (!ctx.signal.aborted) {
          await fetchOne(image);
          await sleep(interval, ctx.signal);
        }
      }),
    );
    logger.info("fetch daemon stopped");
    return [];
  } finally {
    await needs.close();
  }
}

/**
 * The lock a fetch (and its retention) holds on an image: with PostgreSQL,
 * the fleet's advisory lock first (between hosts), then the store's own
 * (between processes on this host); with SQLite, a single host's database,
 * the store's lock file alone.
 */
function publishLock(
  ctx: Context,
  setup: Awaited<ReturnType<typeof loadServerConfig>>,
  store: Awaited<ReturnType<typeof openImageStore>>,
  logger: ReturnType<typeof jsonLogger>,
): (name: string) => Promise<Lock> {
  const spec = databaseSpec(ctx, setup, undefined);
  const { kind } = parseDatabase(spec);
  if (kind !== "postgres") return (name) => store.lock(name);
  const wait = setup.config.publish_lock_wait;
  const fleet = postgresPublishLocks(
    spec,
    wait === undefined ? DEFAULT_PUBLISH_LOCK_WAIT_MS : wait * 1000,
    logger,
    spec.replace(/\/\/[^@/]*@/, "//…@"),
  );
  return async (name) => {
    const outer = await fleet.acquire(name);
    try {
      const inner = await store.lock(name);
      return {
        release: async () => {
          await inner.release();
          await outer.release();
        },
      };
    } catch (error) {
      await outer.release();
      throw error;
    }
  };
}
