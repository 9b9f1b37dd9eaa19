/**
 * `os-update`: the device side of A/B updates, with the original's flags.
 * Exit codes: --check 0 = up to date, 1 = update available; every command
 * 2 = usage error, 3 = any other error (the message says which); --apply
 * 4 = the new root is written and staged but the maintenance window is closed.
 */
import { pipeline } from "node:stream/promises";
import { EosError } from "../core/errors.ts";
import { expandLongOptionPrefixes } from "../core/long-options.ts";
import { streamBytes } from "../core/manifest.ts";
import type { Context } from "../io/context.ts";
import { systemBootActions, type BootActions } from "../io/update/boot-actions.ts";
import { sshOriginalRead } from "../io/update/source.ts";
import { describePlan, planBytes, planExact } from "../io/update/root-write.ts";
import { apply, check, firmware, type UpdaterOptions } from "../io/update/updater.ts";
import { commit, rollback } from "../io/update/boot-switch.ts";
import { openReporter, reportingOff } from "../io/update/reporter.ts";
import { sysPath } from "../io/context.ts";
import { windowJson } from "../io/update/window.ts";
import { newProgram, parseProgram, usageError } from "./main.ts";

export interface OsUpdateDeps {
  boot: BootActions;
  /** First retry delay of an interrupted download (doubles each time). */
  retryDelayMs?: number;
  /** At most how often a download reports its progress to the server (default 10 s). */
  progressReportMs?: number;
}

interface Options {
  check?: boolean;
  apply?: boolean;
  commit?: boolean;
  rollback?: boolean;
  firmware?: boolean;
  reboot?: boolean;
  read?: string;
  server?: string;
  pkey?: string;
  port?: string;
  knownHosts?: string;
  config?: string;
  rootDevice?: string;
  esp?: string;
  json?: boolean;
  allowDowngrade?: boolean;
  delta?: boolean;
}

const json = (ctx: Context, value: unknown) => ctx.stdout.write(`${JSON.stringify(value)}\n`);

async function runCheck(ctx: Context, o: UpdaterOptions, opts: Options): Promise<number> {
  const r = await check(o);
  await o.events?.note({
    type: "checked",
    version: r.runningVersion ?? null,
    slot: r.device.layout.running,
    sha256: r.runningSha,
    offered: r.manifest.version,
    available: r.available,
  });
  if (opts.json) {
    json(ctx, {
      update_available: r.available,
      running: { slot: r.device.layout.running, version: r.runningVersion ?? null, sha256: r.runningSha },
      server: {
        name: r.manifest.name,
        version: r.manifest.version,
        sha256: r.manifest.partitions.root.sha256,
      },
      downgrade: r.downgrade,
      download: r.plan
        ? {
            path: r.plan.path,
            bytes: planBytes(r.plan, r.manifest),
            // false: `bytes` is an upper bound (a check does not read the target slot; --apply may need less).
            exact: planExact(r.plan),
            full_bytes: streamBytes(r.manifest.partitions.root),
            ...(r.plan.path === "delta"
              ? { from_version: r.plan.delta.from_version }
              : r.plan.path === "chunks"
                ? {
                    requests: r.plan.work.fetches.length,
                    index_bytes: r.plan.indexBytes,
                    copied_chunks: r.plan.work.copies.length,
                    held_bytes: r.plan.work.heldBytes,
                    // The root's dm-verity superblock and tree: computed on the device, not in `bytes`.
                    tree_bytes: r.plan.tree?.bytes ?? 0,
                  }
                : { reason: r.plan.reason }),
          }
        : null,
      window: windowJson(r.window),
    });
  } else if (r.upToDate) o.say(`up to date: ${r.manifest.version} (slot ${r.device.layout.running})`);
  else if (!r.available)
    o.say(
      `the server offers ${r.manifest.version}, not newer than the running ${r.runningVersion}: not an update`,
    );
  else {
    o.say(`update available: ${r.runningVersion ?? "unknown"} → ${r.manifest.version}`);
    if (r.plan) o.say(`download: ${describePlan(r.plan, r.manifest.partitions.root)}`);
    if (r.window)
      o.say(
        `maintenance window: ${r.window.parsed.spec} (UTC), ${r.window.open ? "open now" : `closed; opens at ${r.window.opens ?? "never"}`}`,
      );
  }
  return r.available ? 1 : 0;
}

async function runApply(ctx: Context, o: UpdaterOptions, opts: Options): Promise<number> {
  const r = await apply(o, { reboot: Boolean(opts.reboot) });
  if (r.status === "up-to-date") o.say(`already up to date: ${r.version}`);
  if (opts.json) json(ctx, r);
  return 0;
}

async function runCommit(ctx: Context, o: UpdaterOptions, opts: Options): Promise<number> {
  const r = await commit(o, { reboot: Boolean(opts.reboot) });
  if (r.status === "not-trial")
    o.say("not a trial boot (no COMMIT_UPDATE on the kernel command line): nothing to commit");
  else if (r.status === "confirmed") o.say(`slot ${r.defaultSlot} came up: boot confirmed`);
  else if (r.status === "no-trial") o.say(`no slot on trial: slot ${r.defaultSlot} is the default`);
  else if (r.status === "committed") o.say(`committed slot ${r.slot} (${r.version ?? "?"})`);
  else if (r.status === "already-default") o.say(`slot ${r.slot} is already the default`);
  if (opts.json) json(ctx, r);
  return 0;
}

function parsePort(text: string | undefined): number | undefined {
  const port = text === undefined ? undefined : Number(text);
  if (port !== undefined && !(Number.isInteger(port) && port > 0 && port < 65536))
    throw usageError(`--port: not a port: ${text}`);
  return port;
}

/** A published file name for `--read` (it becomes part of the SSH command). */
const READ_NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,159}$/;

/** `--read FILE` alone: the original's raw dump (`sudo cat …/os-images/FILE`) to stdout. */
async function runRead(ctx: Context, opts: Options): Promise<number> {
  if (!opts.server) throw usageError("--read needs --server USER@HOST");
  const file = opts.read as string;
  if (!READ_NAME.test(file) || file.includes(".."))
    throw usageError(`--read ${JSON.stringify(file)}: not a published image file name`);
  const stream = sshOriginalRead(
    {
      server: opts.server,
      pkey: opts.pkey,
      port: parsePort(opts.port),
      knownHosts: opts.knownHosts,
      proc: ctx.proc,
    },
    file,
  );
  await pipeline(stream, ctx.stdout, { end: false });
  return 0;
}

export async function osUpdateMain(
  argv: string[],
  ctx: Context,
  deps: OsUpdateDeps = { boot: systemBootActions(ctx.proc) },
): Promise<number> {
  const program = newProgram("os-update", ctx)
    .description(
      "EOS A/B OS update. --check exits 0 when up to date and 1 when an update is available; errors exit 3 (usage 2).",
    )
    .option("--check", "is the server's image different from the running root? (exit 0 = no, 1 = yes)")
    .option("--apply", "write the update into the other slot, verify it, kexec into it on trial")
    .option("--commit", "on a trial boot (COMMIT_UPDATE), make the running slot the default")
    .option("--rollback", "make the other slot the default after verifying it")
    .option("--firmware", "update the EFI partition's firmware files (keeps boot control and EFI binaries)")
    .option("--reboot", "reboot afterwards (with --apply: instead of kexec)")
    .option(
      "--read <name>",
      "image name on the server (SSH): with --check/--apply/--firmware the image to use; alone, write the published file NAME (NAME.raw = disk image, NAME.raw.dev = root, NAME.raw.firmware) to stdout",
    )
    .option("--server <user@host>", "update server (SSH), over os-update.yml's")
    .option("--pkey <file>", "SSH private key, over os-update.yml's")
    .option("--port <port>", "SSH port (default 22)")
    .option(
      "--known-hosts <file>",
      "pin the server's host key for --read (default: accept a new host key once)",
    )
    .option("--config <file>", "configuration (default /etc/os-update.yml)")
    .option("--root-device <disk>", "act on this disk (image file or block device), not the running system")
    .option("--esp <path>", "where the ESP is mounted (default /boot/efi)")
    .option("--allow-downgrade", "accept a server version not newer than the running one")
    .option("--no-delta", "download the whole root even when the server has a delta for this device")
    .option("--json", "machine-readable output");
  let opts: Options = {};
  program.action((o: Options) => {
    opts = o;
  });
  // getopt_long (the original) took unique prefixes: --chec is --check.
  const longOptions = program.options
    .filter((opt) => opt.long !== undefined)
    .map((opt) => ({ long: opt.long as string, takesValue: opt.required || opt.optional }));
  longOptions.push({ long: "--help", takesValue: false });
  const early = await parseProgram(program, expandLongOptionPrefixes(argv, longOptions));
  if (early !== undefined) return early;
  const actions = (["check", "apply", "commit", "rollback", "firmware"] as const).filter((a) => opts[a]);
  // --read alone is the original's raw dump; next to an action it names the image (the original's meaning).
  if (opts.read !== undefined && actions.length === 0) return runRead(ctx, opts);
  if (actions.length !== 1) {
    throw usageError(
      "give exactly one of --check, --apply, --commit, --rollback, --firmware (or --read NAME alone)",
      "see os-update --help",
    );
  }
  const transport =
    opts.read !== undefined || opts.server !== undefined || opts.pkey !== undefined
      ? {
          name: opts.read,
          server: opts.server,
          pkey: opts.pkey,
          port: parsePort(opts.port),
          knownHosts: opts.knownHosts,
        }
      : undefined;
  if (transport?.name !== undefined && !/^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/.test(transport.name))
    throw new EosError("USAGE", `--read ${JSON.stringify(transport.name)}: not an image name`);
  const o: UpdaterOptions = {
    ctx,
    config: opts.config,
    rootDevice: opts.rootDevice,
    esp: opts.esp,
    allowDowngrade: opts.allowDowngrade,
    noDelta: opts.delta === false,
    boot: deps.boot,
    retryDelayMs: deps.retryDelayMs,
    progressReportMs: deps.progressReportMs,
    transport,
    say: (line) => {
      if (!opts.json) ctx.stdout.write(`${line}\n`);
    },
  };
  // Reports: every action but --firmware; sent at the end whatever happened (bounded, never failing the command).
  const action = actions[0] as "check" | "apply" | "commit" | "rollback" | "firmware";
  const events =
    action === "firmware"
      ? reportingOff
      : await openReporter({
          ctx,
          config: opts.config,
          transport,
          esp: opts.esp ?? sysPath(ctx, "/boot/efi"),
          online: opts.rootDevice === undefined,
          warn: (line) => ctx.stderr.write(`${line}\n`),
        });
  o.events = events;
  try {
    return await runAction(ctx, o, opts, action);
  } catch (error) {
    // A closed maintenance window is the schedule working, not a failure of the update.
    const waiting = error instanceof EosError && error.code === "WINDOW";
    if (action !== "firmware" && !waiting)
      await events.note({
        type: "failed",
        stage: action,
        code: error instanceof EosError ? error.code : "INTERNAL",
        message: (error instanceof Error ? error.message : String(error)).slice(0, 1000),
      });
    throw error;
  } finally {
    await events.flush();
  }
}

async function runAction(
  ctx: Context,
  o: UpdaterOptions,
  opts: Options,
  action: "check" | "apply" | "commit" | "rollback" | "firmware",
): Promise<number> {
  switch (action) {
    case "check":
      return runCheck(ctx, o, opts);
    case "apply":
      return runApply(ctx, o, opts);
    case "commit":
      return runCommit(ctx, o, opts);
    case "rollback": {
      const r = await rollback(o, { reboot: Boolean(opts.reboot) });
      if (opts.json) json(ctx, r);
      return 0;
    }
    default: {
      const r = await firmware(o);
      o.say(
        `firmware of ${r.version}: ${r.updated.length} files written, ${r.removed.length} removed; EFI/ kept`,
      );
      if (opts.json) json(ctx, r);
      return 0;
    }
  }
}
