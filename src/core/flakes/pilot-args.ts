/** What a pilot gets on its command line: the flake it was called as, its own options, the app's arguments. */
/**
 * The engine-neutral part of flakes, shared by podman-pilot and (later)
 * firecracker-pilot: /etc/flakes.yml, the NAME.yaml + NAME.d/*.yaml deep
 * merge, a small schema checker whose errors name the file and the key, and
 * the pilot's own caller arguments (`@NAME`, `%option`).
 *
 * No zod and no YAML library here on purpose: the pilots load this on every
 * launch (zod alone adds ~25 ms to a node start; a podman run is ~350 ms).
 * Text → data is in flake-yaml.ts, which the pilots load only on a cache miss.
 */
import { assertFlakeName, baseName, isSafeFlakeName } from "./flake-config.ts";
import { EosError } from "../errors.ts";

// ---------------------------------------------------------------- flakes.yml

export interface PilotArgs {
  /** `@NAME`: a named instance of the flake. */
  instance: string | undefined;
  /** `%option` or `%option:value`. */
  options: Map<string, string | true>;
  /** Everything else, in order, for the app. */
  appArgs: string[];
}

/**
 * Splits the caller's arguments. As in flake-pilot, `@NAME` and the pilot's
 * `%options` may stand anywhere; unlike flake-pilot, only options in `known`
 * are taken (`printf %s` still reaches the app), and `@` followed by something
 * that is not a valid instance name (`curl -d @/tmp/x`) is passed on.
 */
export function parsePilotArgs(args: string[], known: readonly string[]): PilotArgs {
  const options = new Map<string, string | true>();
  const appArgs: string[] = [];
  let instance: string | undefined;
  for (const arg of args) {
    if (arg.startsWith("@") && instance === undefined && isSafeFlakeName(arg.slice(1))) {
      instance = arg.slice(1);
      continue;
    }
    if (arg.startsWith("%")) {
      const body = arg.slice(1);
      const colon = body.indexOf(":");
      const name = colon >= 0 ? body.slice(0, colon) : body;
      if (known.includes(name)) {
        options.set(name, colon >= 0 ? body.slice(colon + 1) : true);
        continue;
      }
    }
    appArgs.push(arg);
  }
  return { instance, options, appArgs };
}

/**
 * `%VAR` in a runtime option becomes the caller's $VAR (flake-pilot: upper
 * case names); `%%` is a literal `%`. An unset variable is an error naming
 * the option and the variable: flake-pilot passed the text on unexpanded,
 * which podman then took as a literal path or value (`--volume %HOME:/home`
 * made a volume named "%HOME"), so a launch that cannot mean what the flake
 * says stops before podman runs.
 */
export function expandPercentVars(option: string, env: Record<string, string | undefined>): string {
  return option.replace(/%%|%([A-Z_][A-Z0-9_]*)/g, (_match, name: string | undefined) => {
    if (name === undefined) return "%";
    const value = env[name];
    if (value === undefined) {
      throw new EosError(
        "FLAKE",
        `runtime option ${JSON.stringify(option)} uses %${name}, which is not set`,
        {
          hint: `set ${name} in the environment, or change the option in the flake file (%% is a literal %)`,
        },
      );
    }
    return value;
  });
}

/**
 * The flake a pilot runs: argv[0]'s basename (the registered symlink), or the
 * first argument when the pilot is called by its own name.
 */
export function flakeNameFromInvocation(
  pilot: string,
  argv0: string,
  args: string[],
): { name: string; args: string[] } {
  const invoked = baseName(argv0).replace(/\.(mjs|js|ts)$/, "");
  if (invoked === pilot) {
    const [name, ...rest] = args;
    if (!name) {
      throw new EosError("USAGE", `usage: ${pilot} FLAKE [ARGS…] (or call a registered flake by its name)`);
    }
    return { name: assertFlakeName(name), args: rest };
  }
  return { name: assertFlakeName(invoked), args };
}
