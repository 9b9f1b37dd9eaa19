/**
 * /health and /metrics of a server with a control plane.
 *
 * /health needs no token (load balancers and orchestrators probe it): 200
 * when the database answers a query and the image store can be listed,
 * 503 otherwise, with JSON saying which part failed (the cause goes to the
 * log, not to the anonymous caller).
 *
 * /metrics needs an admin token of any role (Bearer, as Prometheus's
 * `authorization` setting sends it): device counts per version and the
 * rollouts' names say what a fleet runs, which is not for anyone who can
 * reach the device port.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { errorMessage } from "../../../core/errors.ts";
import { exposition, fleetFamilies, type RequestCounters } from "../../../core/fleet/metrics.ts";
import { isOnline } from "../../../core/fleet/ui/devices.ts";
import type { Logger } from "../../log.ts";
import { HttpError, sendJson } from "../http-answer.ts";
import type { DashboardData } from "./dashboard-data.ts";

/** A probe that takes longer than this counts as failed: a hung database must not hang the probe. */
const PROBE_MS = 5000;

async function probe(what: () => Promise<unknown>): Promise<{ ok: boolean; ms: number; error?: string }> {
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      what(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${PROBE_MS} ms`)), PROBE_MS);
      }),
    ]);
    return { ok: true, ms: Math.round(performance.now() - started) };
  } catch (error) {
    return { ok: false, ms: Math.round(performance.now() - started), error: errorMessage(error) };
  } finally {
    clearTimeout(timer);
  }
}

export function observeRoutes(o: {
  data: DashboardData;
  counters: RequestCounters;
  now: () => Date;
  logger: Logger;
}) {
  async function health(res: ServerResponse): Promise<number> {
    const database = await probe(() => o.data.ping());
    let images = 0;
    const store = await probe(async () => {
      // list() reads a missing directory as empty: check() says whether the store is there.
      await o.data.images.check();
      images = (await o.data.images.list()).length;
    });
    const ok = database.ok && store.ok;
    if (!ok) o.logger.error("health check failed", { database: database.error, images: store.error });
    return sendJson(res, ok ? 200 : 503, {
      status: ok ? "ok" : "unavailable",
      images,
      database: database.ok ? "ok" : "failed",
      store: store.ok ? "ok" : "failed",
      storage: o.data.images.kind,
    });
  }

  async function metrics(
    req: IncomingMessage,
    res: ServerResponse,
    log: { admin?: string },
  ): Promise<number> {
    const m = /^Bearer (eosadm_[A-Za-z0-9_-]{16,128})$/.exec(req.headers.authorization ?? "");
    const who = m ? await o.data.store.authenticateAdmin(m[1] as string) : undefined;
    if (!who)
      throw new HttpError(401, "/metrics needs an admin token (any role)", {
        "www-authenticate": 'Bearer realm="eos-admin"',
      });
    log.admin = who.name;
    const now = o.now();
    const devices = (await o.data.store.listDevices({})).map((d) => ({ ...d, online: isOnline(d, now) }));
    const text = exposition([
      ...o.counters.families(),
      ...fleetFamilies({
        devices,
        rollouts: await o.data.rollouts.list(),
        images: (await o.data.images.list()).length,
      }),
    ]);
    res.writeHead(200, {
      "content-type": "text/plain; version=0.0.4; charset=utf-8",
      "content-length": Buffer.byteLength(text),
      "cache-control": "no-store",
    });
    res.end(text);
    return Buffer.byteLength(text);
  }

  return {
    handles: (path: string) => path === "/health" || path === "/metrics",
    async handle(
      req: IncomingMessage,
      res: ServerResponse,
      url: URL,
      log: { admin?: string },
    ): Promise<number> {
      if (req.method !== "GET" && req.method !== "HEAD")
        throw new HttpError(405, "only GET and HEAD", { allow: "GET, HEAD" });
      return url.pathname === "/health" ? health(res) : metrics(req, res, log);
    },
  };
}
