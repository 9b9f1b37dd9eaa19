/**
 * The one place that starts processes. Every tool EOS runs (podman, QEMU,
 * cryptsetup, kexec, mksquashfs, ssh, xz, …) goes through a ProcessRunner
 * that comes in with the command's Context, so a test can record or replace
 * what would run. Argv arrays only: nothing is ever handed to a shell.
 */
import { spawn as nodeSpawn, type ChildProcess, type StdioOptions } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { access, constants as fsConstants } from "node:fs/promises";
import { constants as osConstants } from "node:os";
import { PassThrough, type Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { EosError, type ErrorCode } from "../core/errors.ts";
import { formatArgv, shellQuote } from "../core/shell-quote.ts";

export type { ChildProcess, StdioOptions };

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Bytes written to the child's stdin, then closed. */
  input?: Buffer | string;
  /** stdin when there is no `input` (default: ignore). */
  stdin?: "ignore" | "inherit";
  signal?: AbortSignal;
  /**
   * Run in a process group of its own and, on abort, stop the whole group
   * (SIGTERM, SIGKILL after a grace), then wait for it: for tools that fork
   * workers of their own (mmdebstrap's apt and dpkg in the chroot), which
   * would go on writing into the tree after the tool itself was stopped.
   */
  group?: boolean;
  timeoutMs?: number;
  /** Each output line (stdout and stderr) as it arrives. */
  onLine?: (line: string) => void;
  /** Keep stdout (default true); false for chatty tools whose output is not needed. */
  capture?: boolean;
  /** Throw ProcessError on a non-zero exit (default true); false returns the result. */
  check?: boolean;
  /** Error code of the ProcessError (default IO). */
  code?: ErrorCode;
  /** What failed, for the message (default: the command and its first arguments). */
  what?: string;
  hint?: string;
}

export interface RunResult {
  /** Exit code; a process killed by a signal gives 128+n. */
  code: number;
  signal: NodeJS.Signals | null;
  stdout: string;
  stdoutBytes: Buffer;
  stderr: string;
}

export interface StartOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  stdio?: StdioOptions;
  /** Its own process group (signals from the terminal reach only us). */
  detached?: boolean;
  /** Let the caller exit while it runs (a VM kept for later calls). */
  unref?: boolean;
  /** stdout appended to this file (stderr too with `stderrToLog`; else stderr is kept). */
  logFile?: string;
  stderrToLog?: boolean;
}

export interface Started {
  child: ChildProcess;
  pid: number;
  argv: string[];
  /** Resolves when the process has ended (never rejects; a failed start gives code -1). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The last 16 KiB of stderr, when stderr is a pipe. */
  stderr(): string;
}

export interface ProcessRunner {
  /** Runs to completion with captured output. */
  run(argv: string[], options?: RunOptions): Promise<RunResult>;
  /** Starts a process and hands back its handle (streams, exit). */
  start(argv: string[], options?: StartOptions): Started;
}

/** A command that failed: which one, how, and what it said. */
export class ProcessError extends EosError {
  readonly argv: string[];
  readonly exit: number;
  readonly stderr: string;

  constructor(code: ErrorCode, message: string, argv: string[], exit: number, stderr: string, hint?: string) {
    super(code, message, hint === undefined ? {} : { hint });
    this.argv = argv;
    this.exit = exit;
    this.stderr = stderr;
  }
}

const STDERR_KEEP = 16 * 1024;

function exitCodeOf(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  return 128 + (signal ? (osConstants.signals[signal] ?? 0) : 0);
}

function notStarted(argv: string[], error: Error, code: ErrorCode, hint: string | undefined): EosError {
  const cmd = argv[0] ?? "";
  const enoent = (error as NodeJS.ErrnoException).code === "ENOENT";
  return new EosError(
    code,
    enoent ? `${cmd} is not installed (not found in PATH)` : `${cmd}: ${error.message}`,
    {
      ...(enoent ? { hint: hint ?? "run scripts/setup.sh to install the tools EOS needs" } : {}),
    },
  );
}

function tail(text: string, lines: number): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

/** The runner that really starts processes. */
export function systemRunner(): ProcessRunner {
  return {
    async run(argv, options = {}) {
      const [cmd, ...args] = argv;
      if (!cmd) throw new EosError("INTERNAL", "run: empty argv");
      const code = options.code ?? "IO";
      const child = nodeSpawn(cmd, args, {
        cwd: options.cwd,
        env: options.env ?? process.env,
        stdio: [options.input === undefined ? (options.stdin ?? "ignore") : "pipe", "pipe", "pipe"],
        ...(options.group ? { detached: true } : options.signal ? { signal: options.signal } : {}),
        ...(options.timeoutMs ? { timeout: options.timeoutMs } : {}),
      });
      const stopGroup = () => void killGroup(child);
      if (options.group) {
        if (options.signal?.aborted) stopGroup();
        else options.signal?.addEventListener("abort", stopGroup, { once: true });
      }
      const capture = options.capture ?? true;
      const out: Buffer[] = [];
      let err = "";
      let partial = { out: "", err: "" };
      const relay = (which: "out" | "err", chunk: Buffer) => {
        if (which === "out" && capture) out.push(chunk);
        const text = chunk.toString("utf8");
        if (which === "err") err = (err + text).slice(-STDERR_KEEP * 4);
        if (!options.onLine) return;
        const lines = (partial[which] + text).split("\n");
        partial = { ...partial, [which]: lines.pop() ?? "" };
        for (const line of lines) options.onLine(line);
      };
      child.stdout?.on("data", (c: Buffer) => relay("out", c));
      child.stderr?.on("data", (c: Buffer) => relay("err", c));
      child.stdin?.on("error", () => undefined); // EPIPE when the tool does not read its input
      if (options.input !== undefined) child.stdin?.end(options.input);
      const status = await new Promise<{
        code: number | null;
        signal: NodeJS.Signals | null;
        error?: Error;
      }>((resolve) => {
        child.once("error", (error) => resolve({ code: null, signal: null, error }));
        child.once("close", (c, signal) => resolve({ code: c, signal }));
      });
      options.signal?.removeEventListener("abort", stopGroup);
      if (options.onLine) {
        if (partial.out) options.onLine(partial.out);
        if (partial.err) options.onLine(partial.err);
      }
      if (status.error && (status.error as NodeJS.ErrnoException).code !== "ABORT_ERR") {
        throw notStarted(argv, status.error, code, options.hint);
      }
      const stdoutBytes = Buffer.concat(out);
      const result: RunResult = {
        code: exitCodeOf(status.code, status.signal),
        signal: status.signal,
        stdout: stdoutBytes.toString("utf8"),
        stdoutBytes,
        stderr: err.trim(),
      };
      if (options.signal?.aborted) {
        throw new EosError("INTERRUPTED", `${options.what ?? cmd}: stopped by a signal`);
      }
      if (result.code !== 0 && (options.check ?? true)) {
        const why = status.signal ? `killed by ${status.signal}` : `exit status ${result.code}`;
        const what = options.what ?? `${cmd} ${args.slice(0, 3).join(" ")}${args.length > 3 ? " …" : ""}`;
        throw new ProcessError(
          code,
          `${what.trim()} failed (${why})${result.stderr ? `: ${tail(result.stderr, 12)}` : ""}`,
          argv,
          result.code,
          result.stderr,
          options.hint,
        );
      }
      return result;
    },

    start(argv, options = {}) {
      const [cmd, ...args] = argv;
      if (!cmd) throw new EosError("INTERNAL", "start: empty argv");
      let stdio = options.stdio ?? ["ignore", "pipe", "pipe"];
      let logFd: number | undefined;
      if (options.logFile) {
        logFd = openSync(options.logFile, "a");
        stdio = options.stdio ?? ["ignore", logFd, options.stderrToLog ? logFd : "pipe"];
      }
      let child: ChildProcess;
      try {
        child = nodeSpawn(cmd, args, {
          cwd: options.cwd,
          env: options.env ?? process.env,
          stdio,
          detached: options.detached ?? false,
        });
      } finally {
        if (logFd !== undefined) closeSync(logFd);
      }
      let errText = "";
      child.stderr?.setEncoding("utf8").on("data", (s: string) => {
        errText = (errText + s).slice(-STDERR_KEEP);
      });
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
        child.once("error", (error) => {
          errText += notStarted(argv, error, "IO", undefined).message;
          resolve({ code: -1, signal: null });
        });
        child.once("exit", (code, signal) => resolve({ code, signal }));
      });
      if (options.unref) child.unref();
      return { child, pid: child.pid ?? -1, argv, exited, stderr: () => errText };
    },
  };
}

const FORWARDED_SIGNALS: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"];

/**
 * Runs a program on the caller's own stdio (streams stay separate and
 * unbuffered) and returns its exit code (killed by a signal: 128+n). The
 * signals a launcher stands in for are passed on while it runs.
 */
export async function launch(
  proc: ProcessRunner,
  argv: string[],
  options: {
    env?: NodeJS.ProcessEnv;
    stdio?: StdioOptions;
    ownGroup?: boolean;
    code?: ErrorCode;
    hint?: string;
  } = {},
): Promise<number> {
  const started = proc.start(argv, {
    ...(options.env ? { env: options.env } : {}),
    stdio: options.stdio ?? "inherit",
    detached: options.ownGroup ?? false,
  });
  const handlers = FORWARDED_SIGNALS.map((sig) => {
    const handler = () => {
      if (started.child.exitCode === null && started.child.signalCode === null) started.child.kill(sig);
    };
    process.on(sig, handler);
    return [sig, handler] as const;
  });
  let startError: Error | undefined;
  started.child.once("error", (error) => (startError = error));
  const { code, signal } = await started.exited;
  for (const [sig, handler] of handlers) process.off(sig, handler);
  if (startError) throw notStarted(argv, startError, options.code ?? "IO", options.hint);
  return exitCodeOf(code, signal);
}

/**
 * A program as a stream stage: `input` (if any) is its stdin, its stdout the
 * returned stream. The stream errors with `fail(code, stderr)` when the
 * program fails, and ends only after it exited cleanly; destroying the
 * stream stops the program.
 */
export function pipeThrough(
  proc: ProcessRunner,
  argv: string[],
  options: {
    input?: Readable;
    env?: NodeJS.ProcessEnv;
    fail: (code: number, stderr: string) => Error;
    notStarted: (error: Error) => Error;
  },
): Readable {
  const started = proc.start(argv, {
    ...(options.env ? { env: options.env } : {}),
    stdio: [options.input ? "pipe" : "ignore", "pipe", "pipe"],
  });
  const { child } = started;
  const out = new PassThrough({ highWaterMark: 1 << 20 });
  let inputError: Error | undefined;
  let startError: Error | undefined;
  if (options.input) {
    const input = options.input;
    input.on("error", (error) => {
      inputError = error;
      child.stdin?.destroy();
      child.kill("SIGTERM");
    });
    child.stdin?.on("error", () => undefined); // EPIPE when the program gives up early
    if (child.stdin) input.pipe(child.stdin);
  }
  child.stdout?.pipe(out, { end: false });
  child.once("error", (error) => (startError = error));
  // "close", not "exit": only then has everything the program wrote reached `out`.
  child.once("close", (code: number | null, signal: NodeJS.Signals | null) => {
    if (startError) out.destroy(options.notStarted(startError));
    else if (inputError) out.destroy(inputError);
    else if (code !== 0) out.destroy(options.fail(exitCodeOf(code, signal), started.stderr().trim()));
    else out.end();
  });
  out.on("close", () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
  });
  return out;
}

/** Stops a started process: SIGTERM, then SIGKILL after `graceMs`. */
export async function stopStarted(started: Started, graceMs = 2000): Promise<void> {
  const { child } = started;
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  const done = await Promise.race([started.exited.then(() => true), sleep(graceMs, false, { ref: false })]);
  if (!done) {
    child.kill("SIGKILL");
    await started.exited;
  }
}

const GROUP_GRACE_MS = 10_000;

/**
 * SIGTERM to the child's process group, SIGKILL to what is left of it after
 * GROUP_GRACE_MS (the tool's own clean-up, e.g. mmdebstrap unmounting the
 * chroot's /proc and /dev, gets that long).
 */
async function killGroup(child: ChildProcess): Promise<void> {
  const pid = child.pid;
  if (pid === undefined) return;
  const signalGroup = (sig: NodeJS.Signals | 0): boolean => {
    try {
      process.kill(-pid, sig);
      return true;
    } catch {
      return false; // ESRCH: the group is gone
    }
  };
  if (!signalGroup("SIGTERM")) return;
  const deadline = Date.now() + GROUP_GRACE_MS;
  while (Date.now() < deadline) {
    await sleep(100, undefined, { ref: false });
    if (!signalGroup(0)) return;
  }
  signalGroup("SIGKILL");
}

/** Is a process with this pid alive (ours or another user's)? */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Stops a process we only know by pid: SIGTERM, then SIGKILL after `graceMs`, and waits for it. */
export async function killPid(pid: number, graceMs = 2000): Promise<void> {
  if (!pidAlive(pid)) return;
  try {
    process.kill(pid, "SIGTERM");
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline) {
    if (!pidAlive(pid)) return;
    await sleep(20);
  }
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // gone
  }
  while (pidAlive(pid)) await sleep(10);
}

/**
 * Can QEMU really run a vCPU under KVM here? /dev/kvm may exist and still
 * fail ("failed to set MSR"): start a bare, stopped machine and take it as
 * working when it is still running after `waitMs`.
 */
export async function kvmWorks(proc: ProcessRunner, qemuBinary: string, waitMs = 3000): Promise<boolean> {
  try {
    await access("/dev/kvm", fsConstants.R_OK | fsConstants.W_OK);
  } catch {
    return false;
  }
  const machine = /aarch64/.test(qemuBinary) ? "virt" : "q35";
  const started = proc.start(
    [
      qemuBinary,
      "-accel",
      "kvm",
      "-cpu",
      "host",
      "-machine",
      machine,
      "-m",
      "64",
      "-nodefaults",
      "-display",
      "none",
      "-S",
    ],
    { stdio: "ignore" },
  );
  const outcome = await Promise.race([
    started.exited.then(() => "ended" as const),
    sleep(waitMs, "running" as const, { ref: false }),
  ]);
  if (outcome === "running") {
    started.child.kill("SIGKILL");
    await started.exited;
    return true;
  }
  return false;
}

export { formatArgv, shellQuote };
