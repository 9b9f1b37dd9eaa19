/**
 * Typed errors with stable codes. The code is what scripts and tests match on;
 * the hint tells a person what to do next.
 */
export type ErrorCode =
  | "USAGE"
  | "CONFIG"
  | "NOT_FOUND"
  | "GPT"
  | "MANIFEST"
  | "SIGNATURE"
  | "HASH_MISMATCH"
  | "TRUNCATED"
  | "NETWORK"
  | "HTTP"
  | "AUTH"
  | "REVOKED"
  | "DECOMPRESS"
  | "IO"
  | "REFUSED"
  | "DOWNGRADE"
  | "SLOT"
  | "LOCKED"
  | "BOOT_CONTROL"
  | "PODMAN"
  | "FLAKE"
  | "VM"
  | "REGISTRY"
  | "TPM"
  | "BUILD"
  | "INTERRUPTED"
  | "TIMEOUT"
  | "STALLED"
  | "DELTA"
  | "WINDOW"
  | "STORAGE"
  | "INTERNAL";

export class EosError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  /** Exit code a command returns for this error. */
  readonly exitCode: number;

  constructor(
    code: ErrorCode,
    message: string,
    options: { hint?: string; exitCode?: number; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "EosError";
    this.code = code;
    this.hint = options.hint;
    this.exitCode = options.exitCode ?? (code === "USAGE" ? 2 : 3);
  }
}

export function isEosError(value: unknown): value is EosError {
  return value instanceof EosError;
}

export function errorMessage(value: unknown): string {
  if (value instanceof Error) return value.message;
  return String(value);
}

/** What a command prints for an error, and the exit code it returns. */
export function describeError(command: string, error: unknown): { text: string; exitCode: number } {
  if (isEosError(error)) {
    const hint = error.hint ? `${command}: hint: ${error.hint}\n` : "";
    return { text: `${command}: error [${error.code}]: ${error.message}\n${hint}`, exitCode: error.exitCode };
  }
  const detail = error instanceof Error ? (error.stack ?? error.message) : String(error);
  return { text: `${command}: internal error: ${detail}\n`, exitCode: 70 };
}
