/**
 * The control plane's HTTP routes, next to the image routes of http.ts:
 *   POST   /v1/events                  a device's batch of reports (device token; rate-limited per
 *                                      device: 429, report-limit.ts; a batch of state events only,
 *                                      marked x-eos-events: state, has a small bucket of its own)
 *   POST   /v1/enrol                   {"hint"?} with the fleet's enrolment key → {"device", "token"}
 *                                      (rate-limited per address and per key: 429, enrol-limit.ts)
 *   GET    /v1/admin/whoami            the admin token's name and role (viewer)
 *   GET    /v1/admin/devices           inventory; ?tag= &version= &state= &image= (viewer)
 *   GET    /v1/admin/devices/ID        one device and its history; ?limit= (viewer)
 *   PUT    /v1/admin/devices/ID/tags   {"tags": […]} replaces its tags (operator)
 *   POST   /v1/admin/devices/ID/revoke revokes an enrolled device's token (operator)
 *   GET    /v1/admin/tokens            admin tokens, without secrets (admin)
 *   POST   /v1/admin/tokens            {"name", "role"} → a new token, shown once (admin)
 *   DELETE /v1/admin/tokens/NAME       revokes one (admin)
 *   GET|PUT|DELETE /v1/admin/windows   maintenance windows; …/windows/group one group's (windows-api.ts)
 * Every body is bounded and validated; a refusal names the field at fault
 * and carries the error's stable code.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { z } from "zod";
import { EosError, type ErrorCode } from "../../../core/errors.ts";
import {
  ADMIN_NAME,
  allows,
  normaliseTags,
  parseDeviceFilter,
  ROLES,
  type Role,
} from "../../../core/fleet/admin.ts";
import {
  describeIssue,
  eventBatchSchema,
  MAX_EVENTS_BODY_BYTES,
  STATE_BATCH_HEADER,
  STATE_EVENTS,
} from "../../../core/fleet/events.ts";
import { readBounded } from "../../read-bounded.ts";
import { HttpError, sendJson } from "../http-answer.ts";
import { DEVICE_NAME } from "../tokens.ts";
import type { FleetStore } from "./store.ts";
import type { ImageStore } from "../store.ts";
import { rolloutRoute } from "./rollout-api.ts";
import { DEVICE_TOKEN_PREFIX, ID_HINT, type DeviceTokenStore } from "./device-tokens.ts";
import type { RolloutStore } from "./rollouts.ts";
import type { EnrolLimiter } from "./enrol-limit.ts";
import type { ReportLimiter } from "./report-limit.ts";
import { windowsRoute, type WindowSettings } from "./windows-api.ts";

export interface ControlPlane {
  handles(path: string): boolean;
  handle(
    req: IncomingMessage,
    res: ServerResponse,
    url: URL,
    auth: {
      device(): Promise<string | undefined>;
      /** What the tokens directory says the bearer token is (never a device token from enrolment). */
      enroller(): Promise<{ name: string; enrolment: boolean } | undefined>;
      log: { device?: string; admin?: string };
    },
  ): Promise<number>;
  /** The enrolled device a device token belongs to (undefined: unknown; a 401 HttpError: revoked). */
  deviceOf(token: string): Promise<string | undefined>;
}

const ADMIN_BODY_BYTES = 16 * 1024;
const DEFAULT_HISTORY = 100;
const MAX_HISTORY = 1000;

const tagsBody = z.strictObject({ tags: z.array(z.string()).max(256) });
const enrolBody = z.strictObject({
  hint: z.string().regex(ID_HINT, "letters, digits and . _ - only").optional(),
});
const tokenBody = z.strictObject({
  name: z.string().regex(ADMIN_NAME, "letters, digits and . _ - only"),
  role: z.enum(ROLES),
});

const STATUS: Partial<Record<ErrorCode, number>> = { USAGE: 400, NOT_FOUND: 404, REFUSED: 409, AUTH: 401 };

function asHttpError(error: unknown): unknown {
  if (!(error instanceof EosError)) return error;
  const status = STATUS[error.code];
  if (status === undefined) return error;
  return new HttpError(
    status,
    error.message,
    {},
    { code: error.code, ...(error.hint ? { hint: error.hint } : {}) },
  );
}

const refuse = (status: number, message: string, code: ErrorCode, headers: Record<string, string> = {}) =>
  new HttpError(status, message, headers, { code });

async function readJson<T>(req: IncomingMessage, max: number, schema: z.ZodType<T>): Promise<T> {
  const type = req.headers["content-type"] ?? "";
  if (!/^application\/json\s*(;|$)/i.test(type))
    throw refuse(415, `content-type: must be application/json, not ${JSON.stringify(type)}`, "USAGE");
  const declared = Number(req.headers["content-length"] ?? "0");
  if (declared > max) throw refuse(413, `body: larger than ${max} bytes`, "REFUSED");
  let bytes: Buffer;
  try {
    bytes = await readBounded(req, max, "body", "REFUSED", { deadlineMs: 10_000 });
  } catch (error) {
    if (error instanceof EosError && error.code === "REFUSED") throw refuse(413, error.message, "REFUSED");
    throw refuse(408, "body: not received in time", "TIMEOUT");
  }
  let data: unknown;
  try {
    data = JSON.parse(bytes.toString("utf8"));
  } catch {
    throw refuse(400, "body: not JSON", "USAGE");
  }
  const parsed = schema.safeParse(data);
  if (!parsed.success) throw refuse(400, describeIssue(parsed.error), "USAGE");
  return parsed.data;
}

function pathId(encoded: string, what: string, pattern: RegExp): string {
  let id: string;
  try {
    id = decodeURIComponent(encoded);
  } catch {
    throw refuse(400, `${what}: bad percent-encoding`, "USAGE");
  }
  if (!pattern.test(id)) throw refuse(400, `${what}: not a valid name: ${JSON.stringify(id)}`, "USAGE");
  return id;
}

export function controlPlane(
  store: FleetStore,
  deviceTokens: DeviceTokenStore,
  rollouts?: { store: RolloutStore; images: ImageStore; onError(error: unknown): void },
  enrolLimit?: EnrolLimiter,
  windows?: WindowSettings,
  reportLimit?: ReportLimiter,
): ControlPlane {
  async function admin(
    req: IncomingMessage,
    needed: Role,
    log: { admin?: string },
  ): Promise<{ name: string; role: Role }> {
    const m = /^Bearer (eosadm_[A-Za-z0-9_-]{16,128})$/.exec(req.headers.authorization ?? "");
    const who = m ? await store.authenticateAdmin(m[1] as string) : undefined;
    if (!who)
      throw refuse(401, "an admin token is required", "AUTH", {
        "www-authenticate": 'Bearer realm="eos-admin"',
      });
    log.admin = who.name;
    if (!allows(who.role, needed))
      throw refuse(403, `this needs the ${needed} role; admin token ${who.name} has ${who.role}`, "AUTH");
    return who;
  }

  function method(req: IncomingMessage, allowed: string[]): void {
    if (!allowed.includes(req.method ?? ""))
      throw refuse(405, `only ${allowed.join(", ")} here`, "USAGE", { allow: allowed.join(", ") });
  }

  async function route(
    req: IncomingMessage,
    res: ServerResponse,
    url: URL,
    auth: Parameters<ControlPlane["handle"]>[3],
  ): Promise<number> {
    const path = url.pathname;
    if (path === "/v1/events") {
      method(req, ["POST"]);
      const device = await auth.device();
      if (!device) throw refuse(401, "reports need a device token (the server runs with --no-auth)", "AUTH");
      auth.log.device = device;
      const refusal = reportLimit?.take(device);
      // Over its limit, a device may still say what it became (committed, fell_back…), within a bound of
      // its own; any other batch is refused before its body is read.
      if (refusal && req.headers[STATE_BATCH_HEADER] !== "state") throw refusal;
      const batch = await readJson(req, MAX_EVENTS_BODY_BYTES, eventBatchSchema);
      if (refusal) {
        if (!batch.events.every((e) => STATE_EVENTS.has(e.type))) throw refusal;
        reportLimit?.takeState(device);
      }
      const stored = await store.record(device, batch);
      // A report can end a wave (its last commit) or cross the error threshold: judge it now. Not for
      // checks and downloads, most of the traffic, which add no error: judging reads every device of
      // the image (bench/fleet.ts: most of the server's time at 10k devices); the timer judges those.
      if (rollouts && stored.stored > 0 && batch.events.some((e) => STATE_EVENTS.has(e.type)))
        await rollouts.store.evaluate(batch.device.image).catch(rollouts.onError);
      return sendJson(res, 200, stored);
    }
    if (path === "/v1/enrol") {
      method(req, ["POST"]);
      enrolLimit?.address(req.socket.remoteAddress);
      const key = await auth.enroller();
      if (!key) throw refuse(401, "enrolment needs the fleet's enrolment key", "AUTH");
      // A token from `token add DEVICE` is that device's own already: it keeps using it.
      if (!key.enrolment)
        throw refuse(409, `this is device ${key.name}'s own token, not an enrolment key`, "REFUSED", {
          "x-eos-error": "NOT_ENROLMENT_KEY",
        });
      enrolLimit?.key(key.name);
      const body = await readJson(req, ADMIN_BODY_BYTES, enrolBody);
      const enrolled = await deviceTokens.enrol(key.name, body.hint);
      auth.log.device = enrolled.device;
      return sendJson(res, 201, enrolled);
    }
    const revoke = /^\/v1\/admin\/devices\/([^/]+)\/revoke$/.exec(path);
    if (revoke) {
      method(req, ["POST"]);
      await admin(req, "operator", auth.log);
      const id = pathId(revoke[1] as string, "device", DEVICE_NAME);
      await deviceTokens.revoke(id);
      return sendJson(res, 200, { revoked: id });
    }
    const helpers = {
      admin: (needed: Role) => admin(req, needed, auth.log),
      method: (allowed: string[]) => method(req, allowed),
      body: <T>(schema: z.ZodType<T>) => readJson(req, ADMIN_BODY_BYTES, schema),
      pathId,
    };
    if (rollouts) {
      const answered = await rolloutRoute(req, res, url, helpers, rollouts.store, rollouts.images);
      if (answered !== undefined) return answered;
    }
    if (windows) {
      const answered = await windowsRoute(req, res, url, helpers, windows);
      if (answered !== undefined) return answered;
    }
    if (path === "/v1/admin/whoami") {
      method(req, ["GET"]);
      return sendJson(res, 200, await admin(req, "viewer", auth.log));
    }
    if (path === "/v1/admin/devices") {
      method(req, ["GET"]);
      await admin(req, "viewer", auth.log);
      return sendJson(res, 200, { devices: await store.listDevices(parseDeviceFilter(url.searchParams)) });
    }
    const tags = /^\/v1\/admin\/devices\/([^/]+)\/tags$/.exec(path);
    if (tags) {
      method(req, ["PUT"]);
      await admin(req, "operator", auth.log);
      const id = pathId(tags[1] as string, "device", DEVICE_NAME);
      const body = await readJson(req, ADMIN_BODY_BYTES, tagsBody);
      const normalised = normaliseTags(body.tags);
      await store.setTags(id, normalised);
      // Its next check through this server is assigned by the new tags (other replicas: CHECK_CACHE_MS).
      rollouts?.store.forget(id);
      return sendJson(res, 200, { id, tags: normalised });
    }
    const one = /^\/v1\/admin\/devices\/([^/]+)$/.exec(path);
    if (one) {
      method(req, ["GET"]);
      await admin(req, "viewer", auth.log);
      const id = pathId(one[1] as string, "device", DEVICE_NAME);
      const limitText = url.searchParams.get("limit");
      const limit = limitText === null ? DEFAULT_HISTORY : Number(limitText);
      if (!Number.isInteger(limit) || limit < 1 || limit > MAX_HISTORY)
        throw refuse(400, `limit: a whole number from 1 to ${MAX_HISTORY}`, "USAGE");
      const found = await store.device(id, limit);
      if (!found) throw refuse(404, `no device ${id} in the inventory`, "NOT_FOUND");
      return sendJson(res, 200, found);
    }
    if (path === "/v1/admin/tokens") {
      method(req, ["GET", "POST"]);
      await admin(req, "admin", auth.log);
      if (req.method === "GET") return sendJson(res, 200, { tokens: await store.listAdminTokens() });
      const body = await readJson(req, ADMIN_BODY_BYTES, tokenBody);
      const token = await store.addAdminToken(body.name, body.role);
      return sendJson(res, 201, { name: body.name, role: body.role, token });
    }
    const token = /^\/v1\/admin\/tokens\/([^/]+)$/.exec(path);
    if (token) {
      method(req, ["DELETE"]);
      await admin(req, "admin", auth.log);
      const name = pathId(token[1] as string, "token", ADMIN_NAME);
      await store.revokeAdminToken(name);
      return sendJson(res, 200, { revoked: name });
    }
    throw refuse(404, "no such resource", "NOT_FOUND");
  }

  return {
    handles: (path) =>
      path === "/v1/events" || path === "/v1/enrol" || path === "/v1/admin" || path.startsWith("/v1/admin/"),
    async handle(req, res, url, auth) {
      try {
        return await route(req, res, url, auth);
      } catch (error) {
        throw asHttpError(error);
      }
    },
    deviceOf: (token) =>
      token.startsWith(DEVICE_TOKEN_PREFIX) ? deviceTokens.authenticate(token) : Promise.resolve(undefined),
  };
}
