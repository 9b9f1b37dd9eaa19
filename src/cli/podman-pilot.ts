/**
 * `podman-pilot`: the launcher a registered container flake's link points
 * to. It finds the flake by the name it was called as (argv[0]) and stands
 * in for the app: the app's exit code is its exit code, stdin/stdout/stderr
 * are the caller's own, signals are passed on. A plain launch is exactly one
 * podman process; the pilot's own failures exit 125.
 */
import type { Context } from "../io/context.ts";
import { launchContainerFlake } from "../io/flakes/container-launch.ts";
import { runPilot } from "../io/flakes/pilot.ts";

export async function podmanPilotMain(argv: string[], ctx: Context): Promise<number> {
  return runPilot("podman-pilot", argv, ctx, launchContainerFlake);
}
