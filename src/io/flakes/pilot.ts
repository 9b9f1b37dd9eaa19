/**
 * What both pilots share: which flake they stand in for (the name they were
 * called by), loading it (the system's flakes, then the user's), PILOT_DEBUG,
 * and how a pilot's own failure becomes an exit code distinct from the app's.
 */
import { describeError, isEosError } from "../../core/errors.ts";
import { flakeNameFromInvocation, type FlakeSource } from "../../core/flakes/flake-config.ts";
import type { Context } from "../context.ts";
import { loadFlakeCached, type FlakesSetup } from "./flake-files.ts";

/** The pilot's own failures (bad flake file, engine missing) exit like `podman run` does for its own errors. */
export const PILOT_ERROR_EXIT = 125;

export type PilotKind = "podman" | "firecracker";

export function isDebug(env: NodeJS.ProcessEnv): boolean {
  const v = env.PILOT_DEBUG;
  return v !== undefined && v !== "" && v !== "0" && v !== "false";
}

/** The flake NAME as its engine's parser reads it; a flake registered in user mode is found too. */
export async function loadPilotFlake<T>(
  ctx: Context,
  name: string,
  kind: PilotKind,
  parse: (sources: FlakeSource[]) => Promise<T>,
): Promise<{ setup: FlakesSetup; flake: T }> {
  try {
    const { setup, value } = await loadFlakeCached(ctx, name, kind, parse);
    return { setup, flake: value };
  } catch (error) {
    // ~/.config/flakes.yml names the directory of a flake registered with --user.
    if (!(isEosError(error) && error.code === "NOT_FOUND") || ctx.env.FLAKES_CONFIG) throw error;
    try {
      const { setup, value } = await loadFlakeCached(ctx, name, kind, parse, { user: true });
      return { setup, flake: value };
    } catch {
      throw error;
    }
  }
}

/**
 * Runs a pilot: called through a flake's link, argv[0] names the flake;
 * called as itself, the first argument does. The app's exit code is the
 * pilot's; the pilot's own failures print one error and exit 125 (2 for usage).
 */
export async function runPilot(
  label: `${PilotKind}-pilot`,
  argv: string[],
  ctx: Context,
  launch: (name: string, args: string[], ctx: Context) => Promise<number>,
): Promise<number> {
  try {
    const { name, args } = flakeNameFromInvocation(label, ctx.argv0 || label, argv);
    return await launch(name, args, ctx);
  } catch (error) {
    ctx.stderr.write(describeError(label, error).text);
    return isEosError(error) && error.code === "USAGE" ? 2 : PILOT_ERROR_EXIT;
  }
}
