/**
 * `fleet --getkey`: puts the device's update credentials where os-update
 * reads them, in /run (tmpfs: gone at power-off), mode 0600: `id_fleet`
 * (SSH key) at /run/id_fleet, `token` (bearer token) at
 * /run/eos/fleet-token. As the seed has it, through the `fleet` flake (the
 * `fleet` container in the image's read-only store); where that cannot run
 * (no podman, no store) or with --direct/--from, by copying the files the
 * root keeps under /usr/share/eos/fleet/ (src/io/update/fleet-credentials.ts).
 */
import { FLEET_SOURCE_DIR } from "../core/image/fleet.ts";
import { sysPath, type Context } from "../io/context.ts";
import { flakeUnavailable, getkeyThroughFlake, installDirect } from "../io/update/fleet-credentials.ts";
import { newProgram, parseProgram, usageError } from "./main.ts";

export async function fleetMain(argv: string[], ctx: Context): Promise<number> {
  const program = newProgram("fleet", ctx)
    .description("fleet credentials of this device")
    .option("--getkey", "install the update credentials into /run (mode 0600)")
    .option("--from <dir>", `copy them from this directory (default ${FLEET_SOURCE_DIR}; implies --direct)`)
    .option("--direct", "copy them from the root, without the fleet container")
    .option("--json", "print what was installed as JSON");
  let opts: { getkey?: boolean; from?: string; direct?: boolean; json?: boolean } = {};
  program.action((o: typeof opts) => {
    opts = o;
  });
  const early = await parseProgram(program, argv);
  if (early !== undefined) return early;
  if (!opts.getkey) throw usageError("nothing to do: pass --getkey");
  if (!opts.direct && opts.from === undefined) {
    const why = await flakeUnavailable(ctx);
    if (why === undefined) {
      const code = await getkeyThroughFlake(ctx, ["--getkey", ...(opts.json ? ["--json"] : [])]);
      if (code !== undefined) return code;
    } else if (!why.quiet) ctx.stderr.write(`fleet: ${why.reason}: copying directly\n`);
  }
  const installed = await installDirect(ctx, opts.from ?? sysPath(ctx, FLEET_SOURCE_DIR));
  if (opts.json) ctx.stdout.write(`${JSON.stringify(installed)}\n`);
  else for (const i of installed) ctx.stdout.write(`${i.what} installed at ${i.path}\n`);
  return 0;
}
