/**
 * The dashboard's HTTP side, at /ui on the update server: sign-in with an
 * admin token into a server-side session, the pages (rendered by
 * core/fleet/ui), and the rollout actions. Every POST needs the session's
 * CSRF token and this server's Origin; every request re-checks the admin
 * token behind the session, so a revoked token or a lowered role takes
 * effect at once. Roles are the admin API's: a viewer reads, an operator
 * also creates, pauses, resumes and aborts rollouts.
 */
import { randomBytes } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { EosError, errorMessage } from "../../../core/errors.ts";
import { allows, parseDeviceFilter, type DeviceFilter } from "../../../core/fleet/admin.ts";
import { isRolloutAction } from "../../../core/fleet/ui/actions.ts";
import { deviceListPage, devicePage, overviewPage } from "../../../core/fleet/ui/devices.ts";
import { CSS, loginPage, messagePage, SCRIPT, type Viewer } from "../../../core/fleet/ui/layout.ts";
import {
  confirmPage,
  imagesPage,
  ROLLOUT_LIST_PATH,
  rolloutList,
  rolloutPage,
  rolloutProgress,
  rolloutsPage,
} from "../../../core/fleet/ui/rollouts.ts";
import {
  clearedCookie,
  cookieName,
  cookieValue,
  postAllowed,
  sameOrigin,
  Sessions,
  sessionCookie,
  type Session,
} from "../../../core/fleet/ui/session.ts";
import { ROLLOUT_ID, type Rollout } from "../../../core/fleet/rollout.ts";
import {
  fieldError,
  initialValues,
  newRolloutPage,
  parseRolloutForm,
  type FieldError,
} from "../../../core/fleet/ui/rollout-form.ts";
import type { Logger } from "../../log.ts";
import { readBounded } from "../../read-bounded.ts";
import { HttpError } from "../http-answer.ts";
import { DEVICE_NAME } from "../tokens.ts";
import type { DashboardData } from "./dashboard-data.ts";
import { createRollout } from "./rollout-api.ts";

const FORM_BYTES = 4096;
/** A rollout's progress alone, what app.js polls on the rollouts page. */
const PROGRESS = /^\/ui\/rollouts\/([^/]+)\/progress$/;
const SECURITY_HEADERS = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "same-origin",
  "x-frame-options": "DENY",
};

export interface Dashboard {
  handles(path: string): boolean;
  handle(req: IncomingMessage, res: ServerResponse, url: URL, log: { admin?: string }): Promise<number>;
}

function send(
  res: ServerResponse,
  status: number,
  body: string,
  type = "text/html; charset=utf-8",
  headers: Record<string, string> = {},
): number {
  const bytes = Buffer.from(body, "utf8");
  res.writeHead(status, {
    "content-type": type,
    "content-length": bytes.length,
    "cache-control": "no-store",
    ...SECURITY_HEADERS,
    ...headers,
  });
  res.end(bytes);
  return bytes.length;
}

function redirect(res: ServerResponse, to: string, headers: Record<string, string> = {}): number {
  res.writeHead(303, { location: to, "cache-control": "no-store", "content-length": 0, ...headers });
  res.end();
  return 0;
}

async function readForm(req: IncomingMessage): Promise<URLSearchParams> {
  const type = req.headers["content-type"] ?? "";
  if (!/^application\/x-www-form-urlencoded\s*(;|$)/i.test(type))
    throw new HttpError(415, "a form must be application/x-www-form-urlencoded");
  try {
    return new URLSearchParams(
      (await readBounded(req, FORM_BYTES, "form", "REFUSED", { deadlineMs: 10_000 })).toString("utf8"),
    );
  } catch (error) {
    throw new HttpError(413, errorMessage(error));
  }
}

function decoded(encoded: string, pattern: RegExp): string | undefined {
  try {
    const id = decodeURIComponent(encoded);
    return pattern.test(id) ? id : undefined;
  } catch {
    return undefined;
  }
}

export function dashboard(o: {
  data: DashboardData;
  secure: boolean;
  now: () => Date;
  logger: Logger;
}): Dashboard {
  const sessions = new Sessions(
    () => randomBytes(32).toString("base64url"),
    () => o.now().getTime(),
  );
  const { data } = o;
  const origin = (req: IncomingMessage) => ({
    origin: req.headers.origin,
    referer: req.headers.referer,
    host: req.headers.host,
  });

  async function login(req: IncomingMessage, res: ServerResponse, log: { admin?: string }): Promise<number> {
    if (!sameOrigin(origin(req), o.secure))
      return send(res, 403, loginPage({ error: "The sign-in did not come from this server's page." }));
    const token = (await readForm(req)).get("token") ?? "";
    const who = /^eosadm_[A-Za-z0-9_-]{16,128}$/.test(token)
      ? await data.store.authenticateAdmin(token)
      : undefined;
    if (!who) {
      o.logger.warn("dashboard sign-in refused", { remote: req.socket.remoteAddress });
      return send(res, 401, loginPage({ error: "That admin token is not valid." }));
    }
    log.admin = who.name;
    const session = sessions.open(token, who);
    o.logger.info("dashboard sign-in", { admin: who.name, role: who.role });
    return redirect(res, "/ui", { "set-cookie": sessionCookie(session.id, o.secure) });
  }

  /** The request's session, its admin token still valid (role as it is now); undefined otherwise. */
  async function sessionOf(req: IncomingMessage): Promise<Session | undefined> {
    const session = sessions.get(cookieValue(req.headers.cookie, cookieName(o.secure)));
    if (!session) return undefined;
    const who = await data.store.authenticateAdmin(session.token);
    if (!who) {
      sessions.close(session.id);
      return undefined;
    }
    session.role = who.role;
    return session;
  }

  async function devices(viewer: Viewer, res: ServerResponse, url: URL): Promise<number> {
    // An empty field of the filter form means "any".
    const given = [...url.searchParams].filter(([, v]) => v !== "");
    let filter: DeviceFilter = {};
    let error: string | undefined;
    try {
      filter = parseDeviceFilter(given);
    } catch (e) {
      if (!(e instanceof EosError)) throw e;
      error = e.message;
    }
    const all = await data.store.listDevices({});
    const shown = error ? [] : await data.store.listDevices(filter);
    const versions = [...new Set(all.map((d) => d.running_version).filter((v): v is string => v !== null))];
    const body = deviceListPage({ viewer, devices: shown, filter, versions, error, now: o.now() });
    return send(res, error ? 400 : 200, body);
  }

  /** Undefined when the session's role is operator or above; else the refusal, sent (for the GET of a form too: a viewer gets no form). */
  function operatorOnly(
    res: ServerResponse,
    session: Session,
    viewer: Viewer,
    doing: string,
  ): number | undefined {
    if (allows(session.role, "operator")) return undefined;
    return send(
      res,
      403,
      messagePage({
        title: "Not allowed",
        message: `${doing} the operator role; ${session.name} is a ${session.role}.`,
        viewer,
        back: "/ui/rollouts",
      }),
    );
  }

  /** A POST's form once this server's origin and the session's CSRF token check out; else the refusal, sent. */
  async function guardPost(
    req: IncomingMessage,
    res: ServerResponse,
    session: Session,
    viewer: Viewer,
    back: string,
  ): Promise<URLSearchParams | number> {
    const form = await readForm(req);
    const allowed = postAllowed(session, form, origin(req), o.secure);
    if (allowed.ok) return form;
    return send(res, 403, messagePage({ title: "Refused", message: allowed.why, viewer, back }));
  }

  async function rolloutAction(
    req: IncomingMessage,
    res: ServerResponse,
    session: Session,
    viewer: Viewer,
    id: string,
    action: string,
  ): Promise<number> {
    if (!isRolloutAction(action))
      return send(res, 404, messagePage({ title: "Not found", message: "No such action.", viewer }));
    const refused = operatorOnly(res, session, viewer, "Pausing, resuming and aborting need");
    if (refused !== undefined) return refused;
    const rollout = await data.rollouts.get(id);
    if (req.method === "GET") return send(res, 200, confirmPage({ viewer, rollout, action }));
    const form = await guardPost(req, res, session, viewer, "/ui/rollouts");
    if (typeof form === "number") return form;
    const reason = (form.get("reason") ?? "").slice(0, 500) || `${action}d by ${session.name} (dashboard)`;
    await data.rollouts.act(id, action, reason);
    data.forgetProgress(id);
    o.logger.info("dashboard rollout action", { admin: session.name, rollout: id, action });
    return redirect(res, "/ui/rollouts");
  }

  /** GET: the form; POST: create through the admin API's path, or the form again naming the fields at fault. */
  async function newRollout(
    req: IncomingMessage,
    res: ServerResponse,
    session: Session,
    viewer: Viewer,
  ): Promise<number> {
    const refused = operatorOnly(res, session, viewer, "Creating a rollout needs");
    if (refused !== undefined) return refused;
    const images = await data.publishedImages();
    if (req.method === "GET")
      return send(res, 200, newRolloutPage({ viewer, images, values: initialValues(images) }));
    const form = await guardPost(req, res, session, viewer, "/ui/rollouts/new");
    if (typeof form === "number") return form;
    const { values, body, errors } = parseRolloutForm(form);
    const again = (status: number, shown: FieldError[]) =>
      send(res, status, newRolloutPage({ viewer, images, values, errors: shown }));
    if (!body) return again(400, errors);
    let created: Rollout;
    try {
      created = await createRollout(body, data.rollouts, data.images);
    } catch (error) {
      // What the API answers 400, 404 or 409 is the operator's input: the form again, never a 500.
      if (!(error instanceof EosError) || !["USAGE", "NOT_FOUND", "REFUSED"].includes(error.code))
        throw error;
      return again(error.code === "REFUSED" ? 409 : 400, [fieldError(error.message)]);
    }
    o.logger.info("dashboard rollout created", { admin: session.name, rollout: created.id });
    return redirect(res, `/ui/rollouts?created=${encodeURIComponent(created.id)}`);
  }

  async function route(
    req: IncomingMessage,
    res: ServerResponse,
    url: URL,
    log: { admin?: string },
  ): Promise<number> {
    const path = url.pathname;
    const method = req.method ?? "";
    if (path === "/ui/app.css" || path === "/ui/app.js") {
      const css = path.endsWith(".css");
      return send(
        res,
        200,
        css ? CSS : SCRIPT,
        css ? "text/css; charset=utf-8" : "text/javascript; charset=utf-8",
      );
    }
    if (method !== "GET" && method !== "POST")
      throw new HttpError(405, "only GET and POST", { allow: "GET, POST" });
    if (path === "/ui/login") return method === "POST" ? login(req, res, log) : send(res, 200, loginPage({}));
    const session = await sessionOf(req);
    if (!session) {
      // A poll of a fragment gets no sign-in page to show in place: a status that stops it.
      if (method === "POST" || PROGRESS.test(path) || path === ROLLOUT_LIST_PATH)
        return send(res, 401, loginPage({ error: "Your session has ended: sign in again." }));
      return redirect(res, "/ui/login");
    }
    log.admin = session.name;
    const viewer: Viewer = { name: session.name, role: session.role, csrf: session.csrf };
    if (path === "/ui/logout") {
      if (method !== "POST") throw new HttpError(405, "sign out with POST", { allow: "POST" });
      const form = await guardPost(req, res, session, viewer, "/ui");
      if (typeof form === "number") return form;
      sessions.close(session.id);
      return send(res, 200, loginPage({ status: "You have signed out." }), undefined, {
        "set-cookie": clearedCookie(o.secure),
      });
    }
    if (path === "/ui/rollouts/new") return newRollout(req, res, session, viewer);
    const progress = PROGRESS.exec(path);
    if (progress && method === "GET") {
      const id = decoded(progress[1] as string, ROLLOUT_ID);
      if (id === undefined) throw new HttpError(404, "not a rollout id");
      const { rollout, waves } = await data.rolloutProgress(id, o.now().getTime());
      return send(res, 200, rolloutProgress(rollout, waves, viewer).text);
    }
    if (path === ROLLOUT_LIST_PATH && method === "GET") {
      const rollouts = (await data.rollouts.list()).map((rollout) => ({ rollout }));
      return send(res, 200, rolloutList(rollouts, viewer).text);
    }
    const act = /^\/ui\/rollouts\/([^/]+)\/([a-z]+)$/.exec(path);
    if (act) {
      const id = decoded(act[1] as string, ROLLOUT_ID);
      if (id === undefined)
        return send(res, 400, messagePage({ title: "Bad request", message: "Not a rollout id.", viewer }));
      return rolloutAction(req, res, session, viewer, id, act[2] as string);
    }
    if (method !== "GET") throw new HttpError(405, "only GET here", { allow: "GET" });
    if (path === "/ui" || path === "/ui/") {
      const [devices, history] = [await data.store.listDevices({}), await data.versionPoints()];
      return send(res, 200, overviewPage({ viewer, devices, history, now: o.now() }));
    }
    if (path === "/ui/devices") return devices(viewer, res, url);
    const one = /^\/ui\/devices\/([^/]+)$/.exec(path);
    if (one) {
      const id = decoded(one[1] as string, DEVICE_NAME);
      const found = id === undefined ? undefined : await data.store.device(id, 200);
      if (!found)
        return send(
          res,
          404,
          messagePage({ title: "Not found", message: "No such device.", viewer, back: "/ui/devices" }),
        );
      return send(res, 200, devicePage({ viewer, device: found.device, events: found.events, now: o.now() }));
    }
    if (path === "/ui/rollouts") {
      const rollouts = await data.rolloutsWithWaves();
      const created = url.searchParams.get("created");
      // Only a rollout that is there: a crafted link cannot make the page announce anything else.
      const notice = rollouts.some((r) => r.rollout.id === created)
        ? `Rollout ${created} created: its first wave is open.`
        : undefined;
      return send(res, 200, rolloutsPage({ viewer, rollouts, notice }));
    }
    const rollout = /^\/ui\/rollouts\/([^/]+)$/.exec(path);
    if (rollout) {
      const id = decoded(rollout[1] as string, ROLLOUT_ID);
      if (id === undefined)
        return send(res, 404, messagePage({ title: "Not found", message: "No such rollout.", viewer }));
      return send(res, 200, rolloutPage({ viewer, ...(await data.rolloutWithMembers(id)) }));
    }
    if (path === "/ui/images")
      return send(res, 200, imagesPage({ viewer, images: await data.publishedImages() }));
    return send(res, 404, messagePage({ title: "Not found", message: "No such page.", viewer }));
  }

  return {
    handles: (path) => path === "/ui" || path.startsWith("/ui/"),
    async handle(req, res, url, log) {
      try {
        return await route(req, res, url, log);
      } catch (error) {
        // A rollout the store refuses (gone, or in a state that cannot take the action): say so on a page.
        if (error instanceof EosError && (error.code === "NOT_FOUND" || error.code === "REFUSED")) {
          const status = error.code === "NOT_FOUND" ? 404 : 409;
          return send(
            res,
            status,
            messagePage({ title: "Refused", message: error.message, back: "/ui/rollouts" }),
          );
        }
        throw error;
      }
    },
  };
}
