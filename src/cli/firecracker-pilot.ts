/**
 * `firecracker-pilot`: the launcher a registered VM flake's link points to.
 * Like podman-pilot it stands in for the app: the app's exit code is its
 * exit code, the app's stdout and stderr arrive on ours, apart, our stdin is
 * the app's stdin, our signals reach the app; its own failures exit 125.
 */
import type { Context } from "../io/context.ts";
import { runPilot } from "../io/flakes/pilot.ts";
import { launchVmFlake } from "../io/flakes/vm-instance.ts";

export async function firecrackerPilotMain(argv: string[], ctx: Context): Promise<number> {
  return runPilot("firecracker-pilot", argv, ctx, launchVmFlake);
}
