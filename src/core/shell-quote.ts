/**
 * POSIX shell quoting: for showing a command line in a log, and for the
 * remote side of ssh (which always hands its command to a shell). Never
 * used to run anything locally: EOS spawns argv arrays.
 */
export function shellQuote(arg: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

export function formatArgv(argv: string[]): string {
  return argv.map(shellQuote).join(" ");
}
