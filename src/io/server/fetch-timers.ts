/**
 * What the original os-fetch did after fetching: one os-update-daemon@NAME
 * timer enabled and started per configured image, so each image is looked
 * for again at its origin (the timer's OnUnitActiveSec). Timers of images no
 * longer in os-update.yml are stopped and disabled. systemctl runs through
 * the context's process runner.
 */
import { EosError, errorMessage } from "../../core/errors.ts";
import { fetchTimerUnit } from "../../core/server/published-name.ts";
import type { Context } from "../context.ts";
import { loadServerConfig } from "./server-config.ts";

export interface TimerSync {
  enabled: string[];
  disabled: string[];
  failed: Array<{ unit: string; error: string }>;
}

/** Timers for every image in os-update.yml (`config`, default /etc/os-update.yml), whatever --image chose. */
export async function syncFetchTimers(ctx: Context, config: string | undefined): Promise<TimerSync> {
  const setup = await loadServerConfig(ctx, config, true);
  const wanted = setup.config.update.map((i) => fetchTimerUnit(i.name));
  const listed = await ctx.proc.run(
    ["systemctl", "list-units", "--all", "--plain", "--no-legend", "--no-pager", "os-update-daemon@*.timer"],
    { check: false },
  );
  if (listed.code !== 0) {
    throw new EosError("IO", `systemctl list-units: ${listed.stderr.trim() || `exit ${listed.code}`}`, {
      hint: "fetch --timers needs systemd; run it from os-fetch.service",
    });
  }
  const present = listed.stdout
    .split("\n")
    .map((line) => line.trim().split(/\s+/)[0] ?? "")
    .filter((unit) => /^os-update-daemon@.+\.timer$/.test(unit));
  const result: TimerSync = { enabled: [], disabled: [], failed: [] };
  const systemctl = async (verb: string, unit: string, done: string[]) => {
    try {
      await ctx.proc.run(["systemctl", verb, "--now", unit], { what: `systemctl ${verb} ${unit}` });
      done.push(unit);
    } catch (error) {
      result.failed.push({ unit, error: errorMessage(error) });
    }
  };
  for (const unit of wanted) await systemctl("enable", unit, result.enabled);
  for (const unit of present.filter((u) => !wanted.includes(u)))
    await systemctl("disable", unit, result.disabled);
  return result;
}
