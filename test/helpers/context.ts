/** Contexts for running commands in-process: output captured, or on the test's stderr. */
import { PassThrough } from "node:stream";
import type { Context } from "../../src/io/context.ts";
import { systemRunner } from "../../src/io/process.ts";

export interface CapturedContext {
  ctx: Context;
  stdout(): string;
  stderr(): string;
}

export function captureContext(
  options: { root?: string; env?: NodeJS.ProcessEnv; signal?: AbortSignal; argv0?: string } = {},
): CapturedContext {
  const out = new PassThrough();
  const err = new PassThrough();
  let stdout = "";
  let stderr = "";
  out.setEncoding("utf8").on("data", (s: string) => (stdout += s));
  err.setEncoding("utf8").on("data", (s: string) => (stderr += s));
  const ctx: Context = {
    env: options.env ?? {},
    stdin: new PassThrough(),
    stdout: out,
    stderr: err,
    root: options.root ?? "/",
    now: () => new Date(),
    interactive: false,
    signal: options.signal ?? new AbortController().signal,
    proc: systemRunner(),
    argv0: options.argv0 ?? "test",
  };
  return { ctx, stdout: () => stdout, stderr: () => stderr };
}

/** A context whose output goes to the test's stderr (long builds and demos show their progress). */
export function consoleContext(env: NodeJS.ProcessEnv = process.env): Context {
  return {
    env,
    stdin: process.stdin,
    stdout: process.stderr,
    stderr: process.stderr,
    root: "/",
    now: () => new Date(),
    interactive: false,
    signal: new AbortController().signal,
    proc: systemRunner(),
    argv0: "test",
  };
}
