/**
 * Running the build's tools: argv arrays only (never a shell), stderr kept
 * for the error message, output lines optionally relayed to a log.
 */
import { spawn, type SpawnOptions } from "node:child_process";
import { EosError, type ErrorCode } from "../../core/errors.ts";

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Each output line (stdout and stderr) as it arrives. */
  onLine?: (line: string) => void;
  /** Bytes written to the child's stdin, then closed. */
  input?: Buffer | string;
  signal?: AbortSignal;
  /** Error code when the command fails (default BUILD). */
  code?: ErrorCode;
  /** Keep stdout (default true); false for chatty tools whose output is not needed. */
  capture?: boolean;
  timeoutMs?: number;
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

function tail(text: string, lines = 15): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

/** Runs `argv[0]` with `argv[1..]`; throws EosError naming the command when it fails. */
export async function run(argv: string[], options: RunOptions = {}): Promise<RunResult> {
  const [cmd, ...args] = argv;
  if (!cmd) throw new EosError("INTERNAL", "run: empty argv");
  const spawnOptions: SpawnOptions = {
    cwd: options.cwd,
    env: options.env ?? process.env,
    stdio: [options.input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
  };
  if (options.signal) spawnOptions.signal = options.signal;
  if (options.timeoutMs) spawnOptions.timeout = options.timeoutMs;
  const child = spawn(cmd, args, spawnOptions);
  const capture = options.capture ?? true;
  const out: string[] = [];
  let err = "";
  let partial = { out: "", err: "" };
  const relay = (which: "out" | "err", chunk: Buffer) => {
    const text = chunk.toString("utf8");
    if (which === "out" && capture) out.push(text);
    if (which === "err") err = (err + text).slice(-64 * 1024);
    if (!options.onLine) return;
    const lines = (partial[which] + text).split("\n");
    partial = { ...partial, [which]: lines.pop() ?? "" };
    for (const line of lines) options.onLine(line);
  };
  child.stdout?.on("data", (c: Buffer) => relay("out", c));
  child.stderr?.on("data", (c: Buffer) => relay("err", c));
  if (options.input !== undefined) child.stdin?.end(options.input);
  const status = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }>(
    (resolve) => {
      child.once("error", (error) => resolve({ code: null, signal: null, error }));
      child.once("close", (code, signal) => resolve({ code, signal }));
    },
  );
  if (options.onLine) {
    if (partial.out) options.onLine(partial.out);
    if (partial.err) options.onLine(partial.err);
  }
  if (status.error) {
    const enoent = (status.error as NodeJS.ErrnoException).code === "ENOENT";
    throw new EosError(
      options.code ?? "BUILD",
      `${cmd}: ${enoent ? "not installed" : status.error.message}`,
      {
        ...(enoent ? { hint: "run scripts/setup.sh to install the build tools" } : {}),
      },
    );
  }
  if (status.code !== 0) {
    const why = status.signal ? `killed by ${status.signal}` : `exit status ${status.code}`;
    throw new EosError(
      options.code ?? "BUILD",
      `${cmd} ${args.slice(0, 3).join(" ")}…: ${why}\n${tail(err)}`,
    );
  }
  return { stdout: out.join(""), stderr: err };
}
