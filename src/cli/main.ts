/**
 * The one place that turns a command's result into a process exit. Commands
 * return exit codes and throw typed errors; this prints errors uniformly.
 */
import { Command, CommanderError } from "commander";
import { EosError, describeError, errorMessage } from "../core/errors.ts";
import { processContext, type Context } from "../io/context.ts";

export type Main = (argv: string[], ctx: Context) => Promise<number>;

export function reportError(ctx: Context, command: string, error: unknown): number {
  const { text, exitCode } = describeError(command, error);
  ctx.stderr.write(text);
  return exitCode;
}

/**
 * Commander set up to write through the context and to return instead of
 * exiting, so commands stay testable in-process.
 */
export function newProgram(name: string, ctx: Context): Command {
  const program = new Command(name);
  program
    .exitOverride()
    .configureOutput({
      writeOut: (s) => ctx.stdout.write(s),
      writeErr: (s) => ctx.stderr.write(s),
    })
    .showHelpAfterError(false)
    .allowExcessArguments(false);
  return program;
}

/** Runs a commander program; returns an exit code for help/version/usage outcomes. */
export async function parseProgram(program: Command, argv: string[]): Promise<number | undefined> {
  try {
    await program.parseAsync(argv, { from: "user" });
    return undefined;
  } catch (error) {
    if (error instanceof CommanderError) {
      if (
        error.code === "commander.helpDisplayed" ||
        error.code === "commander.version" ||
        error.code === "commander.help"
      ) {
        return 0;
      }
      return error.exitCode === 0 ? 0 : 2;
    }
    throw error;
  }
}

export function usageError(message: string, hint?: string): EosError {
  return new EosError("USAGE", message, hint === undefined ? {} : { hint });
}

export function runMain(name: string, main: Main): void {
  const controller = new AbortController();
  const stop = () => controller.abort();
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  const ctx = processContext(controller.signal);
  main(process.argv.slice(2), ctx)
    .then(
      (code) => code,
      (error: unknown) => reportError(ctx, name, error),
    )
    .then((code) => {
      process.exitCode = code;
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
    })
    .catch((error: unknown) => {
      process.stderr.write(`${name}: ${errorMessage(error)}\n`);
      process.exitCode = 70;
    });
}
