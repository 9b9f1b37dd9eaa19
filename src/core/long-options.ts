/**
 * getopt_long's unique prefixes (`--chec` for `--check`), which the original
 * os-update accepted: a prefix of exactly one long option is that option; a
 * prefix of several is a usage error naming them. Pure.
 */
import { EosError } from "./errors.ts";

export interface LongOption {
  /** `--check` */
  long: string;
  /** It takes a value (`--read NAME`): the next word is not an option. */
  takesValue: boolean;
}

export function expandLongOptionPrefixes(argv: string[], options: LongOption[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    if (arg === "--") {
      out.push(...argv.slice(i));
      break;
    }
    if (!arg.startsWith("--") || arg.length === 2) {
      out.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const name = eq < 0 ? arg : arg.slice(0, eq);
    const rest = eq < 0 ? "" : arg.slice(eq);
    const exact = options.find((o) => o.long === name);
    const candidates = exact ? [exact] : options.filter((o) => o.long.startsWith(name));
    if (candidates.length > 1) {
      throw new EosError(
        "USAGE",
        `option ${name} is ambiguous: ${candidates.map((c) => c.long).join(", ")}`,
        { hint: "spell the option out" },
      );
    }
    const option = candidates[0];
    out.push(option ? `${option.long}${rest}` : arg);
    if (option?.takesValue && eq < 0 && i + 1 < argv.length) out.push(argv[++i] ?? "");
  }
  return out;
}
