/**
 * `flake-registry`: the encrypted flake registry (LUKS2 + XFS labelled
 * INSTANCE, mounted at /var/lib/containers/storage).
 *   --setup DEV      format a blank device (refuses anything else unless --force)
 *   --activate DEV   open with the TPM-sealed key (or --key-file), mount, create the flakes dirs
 *   --stop           unmount and close
 *   --status         what is open and mounted, and the boot service's last report
 *   --boot           the image's registry-rw.service: grow p.spare, set it up on first boot, activate
 */
import { EosError } from "../core/errors.ts";
import { parsePcrs } from "../core/registry/registry.ts";
import type { Context } from "../io/context.ts";
import { bootRegistry, writeBootReport } from "../io/registry/boot.ts";
import {
  activateRegistry,
  registryStatus,
  setupRegistry,
  stopRegistry,
  type RegistryOptions,
} from "../io/registry/registry.ts";
import { newProgram, parseProgram, usageError } from "./main.ts";

interface Opts {
  setup?: string;
  activate?: string;
  stop?: boolean;
  status?: boolean;
  boot?: boolean;
  force?: boolean;
  keyFile?: string;
  tpm?: boolean;
  pcrs?: string;
  tcti?: string;
  json?: boolean;
}

export async function flakeRegistryMain(argv: string[], ctx: Context): Promise<number> {
  const program = newProgram("flake-registry", ctx)
    .description("the encrypted flake registry (LUKS2 + XFS at /var/lib/containers/storage)")
    .option("--setup <dev>", "create the registry on a blank device (LUKS2, XFS labelled INSTANCE)")
    .option("--activate <dev>", "open and mount the registry, create the flakes directories")
    .option("--stop", "unmount and close the registry")
    .option("--status", "show whether the registry is open and mounted")
    .option("--boot", "boot service: grow p.spare, set it up when blank, activate it")
    .option("--force", "--setup: destroy whatever the device holds")
    .option("--key-file <file>", "key from a file (mode 0600, ≥ 32 bytes) instead of the TPM: less secure")
    .option("--tpm", "--setup: seal a fresh random key in the TPM 2.0 (the default when there is one)")
    .option("--pcrs <list>", "--setup: bind the sealed key to these SHA-256 PCRs (e.g. 7)", "")
    .option("--tcti <tcti>", "tpm2-tools TCTI (default device:/dev/tpmrm0)")
    .option("--json", "--status: JSON");
  let opts: Opts = {};
  program.action((o: Opts) => {
    opts = o;
  });
  const early = await parseProgram(program, argv);
  if (early !== undefined) return early;
  const actions = [opts.setup, opts.activate, opts.stop, opts.status, opts.boot].filter(
    (a) => a !== undefined && a !== false,
  );
  if (actions.length !== 1) {
    throw usageError("give exactly one of --setup DEV, --activate DEV, --stop, --status, --boot");
  }
  if (opts.tpm && opts.keyFile) throw usageError("--tpm and --key-file exclude each other");
  if (opts.force && !opts.setup) throw usageError("--force applies to --setup only");
  const o: RegistryOptions = {
    log: (line) => ctx.stderr.write(`flake-registry: ${line}\n`),
    proc: ctx.proc,
    pcrs: parsePcrs(opts.pcrs ?? ""),
    ...(opts.keyFile ? { keyFile: opts.keyFile } : {}),
    ...(opts.tpm ? { provider: "tpm2" as const } : {}),
    ...(opts.tcti ? { tpm: { tcti: opts.tcti } } : {}),
  };
  if (opts.setup) {
    const r = await setupRegistry(opts.setup, { ...o, force: Boolean(opts.force) });
    ctx.stdout.write(
      `registry set up on ${r.device} (LUKS2, XFS INSTANCE, key: ${r.provider === "tpm2" ? "sealed in the TPM" : "key file"})\n`,
    );
    return 0;
  }
  if (opts.activate) {
    const r = await activateRegistry(opts.activate, o);
    ctx.stdout.write(`registry ${r.device} active on ${r.mountPoint} (/dev/mapper/${r.mapper})\n`);
    return 0;
  }
  if (opts.stop) {
    const r = await stopRegistry(o);
    ctx.stdout.write(
      r.unmounted || r.closed
        ? `registry ${[r.unmounted ? "unmounted" : "", r.closed ? "closed" : ""].filter(Boolean).join(" and ")}\n`
        : "registry was not active\n",
    );
    return 0;
  }
  if (opts.status) {
    const s = await registryStatus(ctx, o);
    if (opts.json) ctx.stdout.write(`${JSON.stringify(s)}\n`);
    else {
      ctx.stdout.write(
        `registry: ${s.open ? `open (${s.device} as /dev/mapper/${s.mapper})` : "closed"}, ${s.mounted ? `mounted on ${s.mountPoint}` : "not mounted"}\n`,
      );
      if (s.sizeBytes !== undefined)
        ctx.stdout.write(
          `size ${Math.round(s.sizeBytes / 2 ** 20)} MiB, free ${Math.round((s.freeBytes ?? 0) / 2 ** 20)} MiB\n`,
        );
      if (s.bootReport) ctx.stdout.write(`boot: ${s.bootReport}\n`);
    }
    return s.mounted ? 0 : 1;
  }
  const outcome = await bootRegistry(ctx, o).catch((error: unknown) => ({
    code: 1,
    report: `registry not available: ${error instanceof Error ? error.message : String(error)}${error instanceof EosError && error.hint ? ` (${error.hint})` : ""}; data left untouched`,
  }));
  await writeBootReport(ctx, outcome.report).catch(() => undefined);
  ctx.stderr.write(`flake-registry: ${outcome.report}\n`);
  return outcome.code;
}
