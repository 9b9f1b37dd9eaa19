/**
 * Which published version each device is served. Without rollouts or pins
 * every device gets the newest published version, as before; a rollout or a
 * pin that covers the device makes the manifest, signature, streams and
 * deltas it gets those of its assigned version. When that is older than
 * what the device runs (an aborted rollout, a pin back), the device also
 * needs the signed assignment (core/update/assignment.ts) to accept it.
 */
import type { KeyObject } from "node:crypto";
import { errorMessage } from "../../../core/errors.ts";
import { ASSIGNMENT_LIFETIME_MS, signAssignment, tokenDigest } from "../../../core/update/assignment.ts";
import { HttpError } from "../http-answer.ts";
import type { ImageStore, PublishedVersion } from "../store.ts";
import type { Logger } from "../../log.ts";
import type { RolloutStore } from "./rollouts.ts";
import { windowFor } from "../../../core/fleet/window.ts";

export interface VersionResolver {
  version(name: string, device: string | undefined): Promise<PublishedVersion | undefined>;
  /** The canonical signed assignment for this device, or an HttpError saying why there is none. */
  assignment(
    name: string,
    device: string | undefined,
    authorization: string | undefined,
    from: string,
  ): Promise<Buffer>;
}

export function versionResolver(
  store: ImageStore,
  rollouts: RolloutStore,
  key: KeyObject | undefined,
  logger: Logger,
  now: () => Date,
): VersionResolver {
  async function assigned(name: string, device: string | undefined) {
    if (device === undefined) return undefined;
    try {
      return await rollouts.assignmentFor(device, name);
    } catch (error) {
      // The database is down: serving the newest version is what the server did before rollouts.
      logger.error("rollout assignment unavailable", { device, error: errorMessage(error) });
      return undefined;
    }
  }
  async function version(name: string, device: string | undefined) {
    const a = await assigned(name, device);
    if (!a) return store.current(name);
    const found = await store.find(name, a.assignment.version);
    if (!found)
      throw new HttpError(
        404,
        `${name} ${a.assignment.version}, assigned to this device (${a.assignment.kind}), is no longer published`,
      );
    return found;
  }
  return {
    version,
    async assignment(name, device, authorization, from) {
      const a = await assigned(name, device);
      const token = /^Bearer (\S+)$/.exec(authorization ?? "")?.[1];
      if (!a || !token || (a.assignment.kind !== "aborted" && a.assignment.kind !== "pinned"))
        throw new HttpError(404, `no downgrade is assigned to this device for ${name}`);
      if (!key)
        throw new HttpError(
          404,
          "this server has no assignment key: it cannot allow a downgrade",
          {},
          {
            hint: "serve.assignment_key in the server's os-update.yml",
          },
        );
      const to = await version(name, device);
      if (!to) throw new HttpError(404, `image ${name} is not published`);
      if (a.assignment.kind === "aborted") {
        // Abort takes back the rollout's version only: a device that runs anything else is not downgraded.
        const from0 = await store.find(name, a.assignment.from);
        if (from0?.manifest.partitions.root.sha256 !== from)
          throw new HttpError(
            404,
            `this device does not run ${name} ${a.assignment.from}, which was aborted`,
          );
      }
      const doc = signAssignment(
        {
          kind: "eos-downgrade-assignment",
          image: name,
          version: to.manifest.version,
          sha256: to.manifest.partitions.root.sha256,
          from_sha256: from,
          device_token_sha256: tokenDigest(token),
          reason: a.assignment.kind === "aborted" ? `abort ${a.assignment.rollout}` : "pin",
          expires: new Date(now().getTime() + ASSIGNMENT_LIFETIME_MS).toISOString(),
        },
        key,
      );
      return Buffer.from(JSON.stringify(doc), "utf8");
    },
  };
}

type WindowGroupList = ReadonlyArray<{ tags: readonly string[]; window: string }>;

/**
 * A device's maintenance window: its group's (core/fleet/window.ts), sent
 * beside its manifest. Not signed: the server is authenticated by TLS (the
 * device pins update.ca), and a window only says when the device may switch
 * to a root whose release signature it checks anyway; whoever could forge
 * the window could as well withhold the update.
 */
export function windowLookup(
  /** The groups in force (the admin API's, else the config's), and the config's for when those cannot be read. */
  source: { current(): Promise<WindowGroupList>; fallback: WindowGroupList },
  rollouts: RolloutStore | undefined,
  logger: Logger,
): (device: string | undefined) => Promise<string | undefined> {
  return async (device) => {
    const groups = await source.current().catch((error: unknown) => {
      logger.error("maintenance windows unavailable: using the config's", { error: errorMessage(error) });
      return source.fallback;
    });
    // No groups (the common case): no tag lookup on every check.
    if (groups.length === 0) return undefined;
    let tags: string[] = [];
    if (device !== undefined && rollouts)
      tags = await rollouts.tagsOf(device).catch((error: unknown) => {
        // The database is down: only the groups that need no tag still match.
        logger.error("device tags unavailable", { device, error: errorMessage(error) });
        return [];
      });
    return windowFor(groups, tags);
  };
}
