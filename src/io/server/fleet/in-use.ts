/**
 * The versions of an image the fleet still needs (src/core/server/retention.ts),
 * read from the control plane's database: what devices run, what rollouts
 * that are not completed assign (their version, and the previous one that
 * holds devices back or that an abort assigns), and what devices are pinned to.
 */
import type { VersionsInUse } from "../../../core/server/retention.ts";
import type { FleetDb } from "./db.ts";

export async function versionsInUse(fleet: FleetDb, image: string): Promise<VersionsInUse> {
  const why = new Map<string, string>();
  const add = (version: string | null, reason: string) => {
    if (version && !why.has(version)) why.set(version, reason);
  };
  const running = await fleet.db
    .selectFrom("devices")
    .select(["running_version"])
    .select((eb) => eb.fn.countAll<number>().as("devices"))
    .where("image", "=", image)
    .where("running_version", "is not", null)
    .groupBy("running_version")
    .execute();
  for (const r of running) add(r.running_version, `${Number(r.devices)} device(s) run it`);
  const rollouts = await fleet.db
    .selectFrom("rollouts")
    .select(["id", "version", "previous", "state"])
    .where("image", "=", image)
    .where("state", "!=", "completed")
    .execute();
  for (const r of rollouts) {
    add(r.version, `rollout ${r.id} (${r.state}) rolls it out`);
    add(r.previous, `rollout ${r.id} (${r.state}) assigns it back`);
  }
  // Pins name a version, not an image: keep any version of that name.
  const pins = await fleet.db
    .selectFrom("device_pins")
    .select(["version"])
    .select((eb) => eb.fn.countAll<number>().as("devices"))
    .groupBy("version")
    .execute();
  for (const p of pins) add(p.version, `${Number(p.devices)} device(s) pinned to it`);
  return why;
}
