/**
 * `fleet --getkey`: puts the device's update credentials where os-update
 * reads them, in /run (tmpfs: gone at power-off), mode 0600. The image keeps
 * them as files in its read-only root under /usr/share/eos/fleet/ (the
 * original shipped them in a container named `fleet`): `id_fleet` (SSH key
 * for the SSH transport) and `token` (bearer token for HTTPS).
 */
import { chmod, mkdir, readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { EosError } from "../core/errors.ts";
import { sysPath, type Context } from "../io/context.ts";
import { atomicWriteFile } from "../io/files.ts";
import { newProgram, parseProgram, usageError } from "./main.ts";

const SOURCE_DIR = "/usr/share/eos/fleet";
const TARGETS = [
  { file: "id_fleet", target: "/run/id_fleet", what: "SSH key" },
  { file: "token", target: "/run/eos/fleet-token", what: "update token" },
] as const;

export async function fleetMain(argv: string[], ctx: Context): Promise<number> {
  const program = newProgram("fleet", ctx)
    .description("fleet credentials of this device")
    .option("--getkey", "install the update credentials into /run (mode 0600)")
    .option("--from <dir>", `where the image keeps them (default ${SOURCE_DIR})`)
    .option("--json", "print what was installed as JSON");
  let opts: { getkey?: boolean; from?: string; json?: boolean } = {};
  program.action((o: typeof opts) => {
    opts = o;
  });
  const early = await parseProgram(program, argv);
  if (early !== undefined) return early;
  if (!opts.getkey) throw usageError("nothing to do: pass --getkey");
  const from = opts.from ?? sysPath(ctx, SOURCE_DIR);
  const installed: Array<{ what: string; path: string }> = [];
  for (const { file, target, what } of TARGETS) {
    const data = await readFile(join(from, file)).catch(() => undefined);
    if (data === undefined) continue;
    const path = sysPath(ctx, target);
    await mkdir(dirname(path), { recursive: true, mode: 0o755 });
    await atomicWriteFile(path, data, 0o600);
    await chmod(path, 0o600);
    installed.push({ what, path: target });
  }
  if (installed.length === 0) {
    throw new EosError("NOT_FOUND", `no fleet credentials in ${from} (expected id_fleet and/or token)`, {
      hint: "the image's description must provide them",
    });
  }
  if (opts.json) ctx.stdout.write(`${JSON.stringify(installed)}\n`);
  else for (const i of installed) ctx.stdout.write(`${i.what} installed at ${i.path}\n`);
  return 0;
}
