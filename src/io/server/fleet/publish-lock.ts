/**
 * One fetch at a time publishes an image, over every host of a fleet that
 * shares a PostgreSQL database (and a bucket): a session-level advisory lock
 * per image name, held on a connection of its own for the whole fetch of
 * that image. Per image and not global: a slow origin of one image must not
 * hold back another, and two fetches only ever collide on the same name (its
 * pointer, its history, its retention). The lock file in the images
 * directory still guards fetches on one host; this is the one between hosts.
 *
 * A fetch that finds the lock taken waits for it, at most `waitMs`: then it
 * sees what the other one published and has nothing to do; past that it is
 * skipped (PublishBusy), and the next round tries again.
 */
import { EosError, errorMessage } from "../../../core/errors.ts";
import type { Lock } from "../../lock.ts";
import type { Logger } from "../../log.ts";

/** The first key of the two-key advisory lock space: "EOS", so EOS's locks do not meet another app's one-key locks. */
const LOCK_CLASS = 0x454f53;
const POLL_MS = 250;
export const DEFAULT_PUBLISH_LOCK_WAIT_MS = 60_000;

/** Another fetch holds the image's publish lock and did not let go within the wait. */
export class PublishBusy extends EosError {
  constructor(name: string, waitedMs: number) {
    super("LOCKED", `another fetch is publishing ${name} (waited ${Math.round(waitedMs / 1000)} s for it)`, {
      hint: "it publishes the same origin's version; the next fetch round checks again",
    });
  }
}

export interface PublishLocks {
  acquire(name: string): Promise<Lock>;
}

export function postgresPublishLocks(
  url: string,
  waitMs: number,
  logger: Logger,
  describe: string,
): PublishLocks {
  return {
    async acquire(name) {
      const pg = (await import("pg")).default;
      const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
      // The lock lives as long as this connection: losing it lets another fetch in, which is said.
      client.on("error", (error) =>
        logger.error("publish lock connection lost", { image: name, error: errorMessage(error) }),
      );
      try {
        await client.connect();
      } catch (error) {
        // A fleet database that is down must not stop updates being published (retention stops instead);
        // publishing stays whole without the lock, it may only be done twice.
        logger.warn("publish lock unavailable: publishing under this host's lock only", {
          image: name,
          database: describe,
          error: errorMessage(error),
        });
        await client.end().catch(() => undefined);
        return { release: async () => undefined };
      }
      const started = Date.now();
      let said = false;
      try {
        for (;;) {
          const r = await client.query<{ ok: boolean }>(
            "SELECT pg_try_advisory_lock($1::int, hashtext($2)) AS ok",
            [LOCK_CLASS, name],
          );
          if (r.rows[0]?.ok) break;
          const waited = Date.now() - started;
          if (waited >= waitMs) throw new PublishBusy(name, waited);
          if (!said) {
            logger.info("waiting for another fetch to publish", { image: name, wait_s: waitMs / 1000 });
            said = true;
          }
          await new Promise((resolve) => setTimeout(resolve, Math.min(POLL_MS, waitMs - waited)));
        }
      } catch (error) {
        await client.end().catch(() => undefined);
        throw error;
      }
      if (said) logger.info("publish lock taken", { image: name, waited_ms: Date.now() - started });
      return {
        release: async () => {
          // Ending the session releases it too; unlocking first says so without waiting for the close.
          await client
            .query("SELECT pg_advisory_unlock($1::int, hashtext($2))", [LOCK_CLASS, name])
            .catch(() => undefined);
          await client.end().catch(() => undefined);
        },
      };
    },
  };
}
