/**
 * What both pilots share: which flake they stand in for (the name they were
 * called by), loading it (the system's flakes, then the user's), PILOT_DEBUG,
 * and how a pilot's own failure becomes an exit code distinct from the app's.
 */
import { describeError, isEosError } from "../../core/errors.ts";
import { baseName, type FlakeSource } from "../../core/flakes/flake-config.ts";
import { flakeNameFromInvocation } from "../../core/flakes/pilot-args.ts";
import { EOS_VERSION } from "../../core/version.ts";
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
  const warn = (line: string) => void ctx.stderr.write(`${kind}-pilot: warning: ${line}\n`);
  try {
    const { setup, value } = await loadFlakeCached(ctx, name, kind, parse, { warn });
    return { setup, flake: value };
  } catch (error) {
    // ~/.config/flakes.yml names the directory of a flake registered with --user.
    if (!(isEosError(error) && error.code === "NOT_FOUND") || ctx.env.FLAKES_CONFIG) throw error;
    try {
      const { setup, value } = await loadFlakeCached(ctx, name, kind, parse, { user: true, warn });
      return { setup, flake: value };
    } catch {
      throw error;
    }
  }
}

/** What `podman-pilot --help` / `firecracker-pilot --help` print (the pilot called by its own name). */
export function pilotHelp(label: `${PilotKind}-pilot`): string {
  const engine = label === "podman-pilot" ? "podman" : "firecracker";
  const what = label === "podman-pilot" ? "a podman container" : "a microVM (Firecracker, or QEMU)";
  const options =
    label === "podman-pilot"
      ? "%remove %interactive %silent %progress %ignore_missing_volume_path %ignore_sync_error"
      : "%remove %interactive %silent %progress %port:N";
  return [
    `${label} ${EOS_VERSION}: the launcher of flakes that run in ${what}.`,
    "",
    "It is not meant to be called by hand. `flake-ctl " + engine + " register --app /usr/bin/NAME …`",
    `writes NAME.yaml into flakes_dir (/etc/flakes.yml) and links /usr/bin/NAME to ${label};`,
    `calling NAME starts ${label}, which finds the flake by the name it was called as and`,
    "runs the app with the caller's arguments, stdin/stdout/stderr and exit code.",
    "",
    `usage: NAME [@INSTANCE] [%OPTION…] [ARGS…]   (through a flake's link)`,
    `       ${label} NAME [ARGS…]                 (the same, naming the flake)`,
    `       ${label} --help | --version`,
    "",
    `pilot options (not passed to the app): ${options}`,
    "PILOT_DEBUG=1 prints what runs. The pilot's own errors exit 125 (usage 2).",
    "",
  ].join("\n");
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
  const self = baseName(ctx.argv0 || label).replace(/\.(mjs|js|ts)$/, "") === label;
  if (self && (argv[0] === "--help" || argv[0] === "-h")) {
    ctx.stdout.write(pilotHelp(label));
    return 0;
  }
  if (self && (argv[0] === "--version" || argv[0] === "-V")) {
    ctx.stdout.write(`${label} ${EOS_VERSION}\n`);
    return 0;
  }
  try {
    const { name, args } = flakeNameFromInvocation(label, ctx.argv0 || label, argv);
    return await launch(name, args, ctx);
  } catch (error) {
    ctx.stderr.write(describeError(label, error).text);
    return isEosError(error) && error.code === "USAGE" ? 2 : PILOT_ERROR_EXIT;
  }
}
