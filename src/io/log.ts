import type { Writable } from "node:stream";

export type LogLevel = "debug" | "info" | "warn" | "error";
export type LogFields = Record<string, string | number | boolean | null | undefined>;

export interface Logger {
  log(level: LogLevel, msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
}

/** One JSON object per line: what journald and log shippers index best. */
export function jsonLogger(out: Writable, now: () => Date = () => new Date(), base: LogFields = {}): Logger {
  const log = (level: LogLevel, msg: string, fields: LogFields = {}) => {
    out.write(`${JSON.stringify({ time: now().toISOString(), level, msg, ...base, ...fields })}\n`);
  };
  return {
    log,
    info: (msg, fields) => log("info", msg, fields),
    warn: (msg, fields) => log("warn", msg, fields),
    error: (msg, fields) => log("error", msg, fields),
  };
}

export function silentLogger(): Logger {
  const noop = () => undefined;
  return { log: noop, info: noop, warn: noop, error: noop };
}
