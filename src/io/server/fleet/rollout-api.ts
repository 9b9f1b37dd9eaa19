/**
 * The rollout routes of the admin API (api.ts hands them over):
 *   GET    /v1/admin/rollouts                 list; ?image= (viewer)
 *   POST   /v1/admin/rollouts                 create (operator)
 *   GET    /v1/admin/rollouts/ID              one, with its current wave's counts (viewer)
 *   POST   /v1/admin/rollouts/ID/pause|resume|abort   {"reason"?} (operator)
 *   PUT    /v1/admin/devices/ID/pin           {"version"} pins a device (operator)
 *   DELETE /v1/admin/devices/ID/pin           unpins it (operator)
 * A rollout names published versions only: both the new one and the one
 * devices keep (and get back on abort) must be on this server.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { z } from "zod";
import { EosError } from "../../../core/errors.ts";
import { normaliseTags, type Role } from "../../../core/fleet/admin.ts";
import { describeIssue } from "../../../core/fleet/events.ts";
import { parseWaves, ROLLOUT_ID, type Rollout } from "../../../core/fleet/rollout.ts";
import { compareVersions } from "../../../core/manifest.ts";
import { isSafeImageName } from "../../../core/image-name.ts";
import { sendJson } from "../http-answer.ts";
import type { ImageStore } from "../store.ts";
import { DEVICE_NAME } from "../tokens.ts";
import type { RolloutAction, RolloutStore } from "./rollouts.ts";

export interface RouteHelpers {
  admin(needed: Role): Promise<{ name: string }>;
  method(allowed: string[]): void;
  body<T>(schema: z.ZodType<T>): Promise<T>;
  pathId(encoded: string, what: string, pattern: RegExp): string;
}

const version = z.string().min(1).max(64);
const createBody = z.strictObject({
  id: z.string().regex(ROLLOUT_ID, "letters, digits and . _ - only").optional(),
  image: z.string().refine(isSafeImageName, "must be an image name"),
  version,
  previous: version.optional(),
  tags: z.array(z.string()).max(32).optional(),
  waves: z.string().min(1).max(512),
  soak_seconds: z
    .number()
    .int()
    .min(0)
    .max(30 * 86400),
  error_threshold: z.number().min(0).max(1),
  success_threshold: z.number().min(0).max(1),
});
const actionBody = z.strictObject({ reason: z.string().max(500).optional() });
const pinBody = z.strictObject({ version });

/** The newest kept version older than `version`: what devices run before the rollout. */
async function previousOf(images: ImageStore, image: string, version: string): Promise<string> {
  const older: string[] = [];
  for (const vid of await images.history(image)) {
    const v = await images.load(image, vid).catch(() => undefined);
    if (v && compareVersions(v.manifest.version, version) < 0) older.push(v.manifest.version);
  }
  const newest = older.sort(compareVersions).at(-1);
  if (newest === undefined)
    throw new EosError("USAGE", `previous: no published ${image} older than ${version}`, {
      hint: "name the version devices keep with previous (--previous)",
    });
  return newest;
}

/**
 * The one way a rollout is made, for the API and the dashboard's form alike:
 * the body checked field by field (USAGE naming the field), both versions
 * published here, then written. NOT_FOUND for a version the server does not
 * keep, REFUSED for a name that is taken.
 */
export async function createRollout(
  input: unknown,
  rollouts: RolloutStore,
  images: ImageStore,
): Promise<Rollout> {
  const parsed = createBody.safeParse(input);
  if (!parsed.success) throw new EosError("USAGE", describeIssue(parsed.error));
  const b = parsed.data;
  const waves = parseWaves(b.waves);
  const filter = { tags: normaliseTags(b.tags ?? []) };
  for (const [field, v] of [["version", b.version] as const, ["previous", b.previous] as const]) {
    if (v !== undefined && !(await images.find(b.image, v)))
      throw new EosError("NOT_FOUND", `${field}: ${b.image} ${v} is not published on this server`, {
        hint: "a rollout's versions must both be kept by the server (os-update-server fetch)",
      });
  }
  const previous = b.previous ?? (await previousOf(images, b.image, b.version));
  if (previous === b.version) throw new EosError("USAGE", "previous: must differ from version");
  return rollouts.create({ ...b, previous, filter, waves });
}

export async function rolloutRoute(
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  h: RouteHelpers,
  rollouts: RolloutStore,
  images: ImageStore,
): Promise<number | undefined> {
  const path = url.pathname;
  if (path === "/v1/admin/rollouts") {
    h.method(["GET", "POST"]);
    if (req.method === "GET") {
      await h.admin("viewer");
      const image = url.searchParams.get("image") ?? undefined;
      return sendJson(res, 200, { rollouts: await rollouts.list(image) });
    }
    const who = await h.admin("operator");
    const created = await createRollout(await h.body(z.unknown()), rollouts, images);
    return sendJson(res, 201, { rollout: created, by: who.name });
  }
  const act = /^\/v1\/admin\/rollouts\/([^/]+)\/(pause|resume|abort)$/.exec(path);
  if (act) {
    h.method(["POST"]);
    const who = await h.admin("operator");
    const id = h.pathId(act[1] as string, "rollout", ROLLOUT_ID);
    const b = await h.body(actionBody);
    const action = act[2] as RolloutAction;
    const rollout = await rollouts.act(id, action, b.reason ?? `${action}d by ${who.name}`);
    return sendJson(res, 200, { rollout });
  }
  const one = /^\/v1\/admin\/rollouts\/([^/]+)$/.exec(path);
  if (one) {
    h.method(["GET"]);
    await h.admin("viewer");
    const rollout = await rollouts.get(h.pathId(one[1] as string, "rollout", ROLLOUT_ID));
    return sendJson(res, 200, { rollout, wave: await rollouts.count(rollout) });
  }
  const pin = /^\/v1\/admin\/devices\/([^/]+)\/pin$/.exec(path);
  if (pin) {
    h.method(["PUT", "DELETE"]);
    await h.admin("operator");
    const id = h.pathId(pin[1] as string, "device", DEVICE_NAME);
    if (req.method === "DELETE") {
      await rollouts.pin(id, undefined);
      return sendJson(res, 200, { id, pinned: null });
    }
    const b = await h.body(pinBody);
    await rollouts.pin(id, b.version);
    return sendJson(res, 200, { id, pinned: b.version });
  }
  return undefined;
}
