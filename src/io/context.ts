/**
 * Side effects enter commands through a Context, so tests can point a command
 * at a temporary root, capture its output and control its clock.
 */
import type { Readable, Writable } from "node:stream";
import { join } from "node:path";
import { systemRunner, type ProcessRunner } from "./process.ts";

export interface Context {
  env: NodeJS.ProcessEnv;
  stdin: Readable;
  stdout: Writable;
  stderr: Writable;
  /** Prefix for absolute system paths (`/etc`, `/run`, `/srv`): "/" on a real system. */
  root: string;
  now(): Date;
  /** True when progress may redraw a line (stderr is a terminal). */
  interactive: boolean;
  /** Aborts long-running commands (daemon, serve) on SIGINT/SIGTERM. */
  signal: AbortSignal;
  /** Starts every process the command runs. */
  proc: ProcessRunner;
  /** The name the command was called by (a flake's link finds its flake by it). */
  argv0: string;
}

export function processContext(signal: AbortSignal): Context {
  return {
    env: process.env,
    stdin: process.stdin,
    stdout: process.stdout,
    stderr: process.stderr,
    root: process.env.EOS_ROOT ?? "/",
    now: () => new Date(),
    interactive: Boolean(process.stderr.isTTY),
    signal,
    proc: systemRunner(),
    argv0: process.argv[1] ?? "",
  };
}

/** Resolves a system path such as `/etc/os-update.yml` under the context root. */
export function sysPath(ctx: Pick<Context, "root">, path: string): string {
  return ctx.root === "/" ? path : join(ctx.root, path);
}
