/**
 * `os-update`: the device side of A/B updates, with the original's flags.
 * Exit codes: --check 0 = up to date, 1 = update available; every command
 * 2 = usage error, 3 = any other error (the message says which).
 */
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import {
  commitSlot,
  DEFAULT_TRIES,
  kexecCommandLine,
  markInvalid,
  markTrial,
  otherSlot,
  parseKernelCommandLine,
  readBootState,
  rollbackTo,
  SLOT_LABEL,
  type Slot,
} from "../core/update/bootctl.ts";
import { deviceConfigSchema, parseYamlConfig, type DeviceConfig } from "../core/config.ts";
import { EosError } from "../core/errors.ts";
import {
  compareVersions,
  decodeManifest,
  decodeSignatures,
  verifyManifestSignature,
  type Manifest,
} from "../core/manifest.ts";
import {
  findKernel,
  systemBootActions,
  withSlotMounted,
  type BootActions,
} from "../io/update/boot-actions.ts";
import { sysPath, type Context } from "../io/context.ts";
import { readBootControl, writeBootControl } from "../io/update/boot-control.ts";
import { updateFirmware } from "../io/update/firmware.ts";
import { atomicWriteFile } from "../io/files.ts";
import { hashRange } from "../io/hash.ts";
import { loadTrustedKeys } from "../io/keys.ts";
import { acquireLock } from "../io/lock.ts";
import { progress } from "../io/progress.ts";
import { writeSlot } from "../io/update/slot-writer.ts";
import { locateSlots, type SlotLayout } from "../io/update/slots.ts";
import { httpSource, sshOriginalRead, sshSource, type UpdateSource } from "../io/update/source.ts";
import { newProgram, parseProgram, usageError } from "./main.ts";
import { open } from "node:fs/promises";

const DEFAULT_KEYS = "/usr/share/eos/keys";
const DEFAULT_TOKEN = "/run/eos/fleet-token";
const DEFAULT_ESP = "/boot/efi";

export interface OsUpdateDeps {
  boot: BootActions;
  /** First retry delay of an interrupted download (doubles each time). */
  retryDelayMs?: number;
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
}

async function loadConfig(
  ctx: Context,
  file: string | undefined,
): Promise<{ config: DeviceConfig; path: string }> {
  const path = file ?? sysPath(ctx, "/etc/os-update.yml");
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch {
    throw new EosError("CONFIG", `${path}: cannot read the configuration`, { hint: "pass --config FILE" });
  }
  return { config: parseYamlConfig(text, path, deviceConfigSchema), path };
}

async function makeSource(ctx: Context, config: DeviceConfig, path: string): Promise<UpdateSource> {
  const u = config.update;
  if (u.url) {
    const tokenFile = u.token ?? sysPath(ctx, DEFAULT_TOKEN);
    const token = (await readFile(tokenFile, "utf8").catch(() => undefined))?.trim();
    if (u.token && token === undefined) {
      throw new EosError("AUTH", `${path}: update.token: cannot read ${tokenFile}`, {
        hint: "run `fleet --getkey`",
      });
    }
    const ca = u.ca ? await readFile(u.ca) : undefined;
    return httpSource({ url: u.url, name: u.name, token, ca });
  }
  if (u.server) {
    return sshSource({
      server: u.server,
      name: u.name,
      pkey: u.pkey,
      port: u.port,
      knownHosts: u.known_hosts,
    });
  }
  throw new EosError("CONFIG", `${path}: update: needs url (HTTPS) or server (SSH)`);
}

async function fetchVerifiedManifest(
  ctx: Context,
  config: DeviceConfig,
  source: UpdateSource,
): Promise<Manifest> {
  const keys = await loadTrustedKeys(config.update.keys ?? [sysPath(ctx, DEFAULT_KEYS)]);
  const { manifest, signature } = await source.fetchManifest();
  verifyManifestSignature(manifest, decodeSignatures(signature, `${source.describe} signature`), keys);
  return decodeManifest(manifest, `${source.describe} manifest`);
}

interface Device {
  layout: SlotLayout;
  esp: string;
  cmdline: ReturnType<typeof parseKernelCommandLine>;
}

async function openDevice(ctx: Context, opts: Options): Promise<Device> {
  if (opts.rootDevice !== undefined && opts.esp === undefined) {
    throw usageError("--root-device needs --esp PATH (where that disk's ESP is mounted)");
  }
  const esp = opts.esp ?? sysPath(ctx, DEFAULT_ESP);
  const cmdline = parseKernelCommandLine(
    await readFile(sysPath(ctx, "/proc/cmdline"), "utf8").catch(() => ""),
  );
  const layout = await locateSlots(ctx, {
    rootDevice: opts.rootDevice,
    cmdline,
    bootDefault: async () => readBootState(await readBootControl(esp)).defaultSlot,
  });
  return { layout, esp, cmdline };
}

/**
 * sha256 of the running slot over `size` bytes, computed once per boot: the
 * root is read-only, so its identity cannot change until the next boot.
 */
async function runningRootHash(ctx: Context, device: Device, size: number): Promise<string> {
  const info = device.layout.slots[device.layout.running];
  if (!info) throw new EosError("SLOT", "running slot not found");
  const length = Math.min(size, info.range.length);
  const bootId = (
    await readFile(sysPath(ctx, "/proc/sys/kernel/random/boot_id"), "utf8").catch(() => "")
  ).trim();
  const cacheDir = sysPath(ctx, "/run/os-update");
  const cacheFile = join(cacheDir, `root-${info.partition.uniqueGuid.toLowerCase()}.json`);
  if (device.layout.online && bootId) {
    const cached = JSON.parse(await readFile(cacheFile, "utf8").catch(() => "{}")) as {
      bootId?: string;
      size?: number;
      sha256?: string;
    };
    if (cached.bootId === bootId && cached.size === length && cached.sha256) return cached.sha256;
  }
  const handle = await open(device.layout.disk, "r");
  let sha256: string;
  try {
    const bar = ctx.interactive
      ? progress(ctx.stderr, `hashing slot ${device.layout.running}`, length, { interactive: true })
      : undefined;
    sha256 = await hashRange(handle, info.range.offset, length, (n) => bar?.add(n));
    bar?.done();
  } finally {
    await handle.close();
  }
  if (device.layout.online && bootId) {
    await mkdir(cacheDir, { recursive: true, mode: 0o755 });
    await atomicWriteFile(cacheFile, JSON.stringify({ bootId, size: length, sha256 }));
  }
  return sha256;
}

function say(ctx: Context, opts: Options, text: string): void {
  if (!opts.json) ctx.stdout.write(`${text}\n`);
}

interface CheckResult {
  manifest: Manifest;
  device: Device;
  runningSha: string;
  runningVersion: string | undefined;
  upToDate: boolean;
  downgrade: boolean;
}

async function check(ctx: Context, opts: Options): Promise<CheckResult> {
  const { config, path } = await loadConfig(ctx, opts.config);
  const source = await makeSource(ctx, config, path);
  const manifest = await fetchVerifiedManifest(ctx, config, source);
  const device = await openDevice(ctx, opts);
  const runningSha = await runningRootHash(ctx, device, manifest.partitions.root.size);
  const state = await readBootControl(device.esp)
    .then(readBootState)
    .catch(() => undefined);
  const runningVersion = state?.slots[device.layout.running].version;
  const upToDate = runningSha === manifest.partitions.root.sha256;
  const downgrade =
    !upToDate && runningVersion !== undefined && compareVersions(manifest.version, runningVersion) < 0;
  return { manifest, device, runningSha, runningVersion, upToDate, downgrade };
}

async function runCheck(ctx: Context, opts: Options): Promise<number> {
  const r = await check(ctx, opts);
  const available = !r.upToDate && (!r.downgrade || Boolean(opts.allowDowngrade));
  if (opts.json) {
    ctx.stdout.write(
      `${JSON.stringify({
        update_available: available,
        running: { slot: r.device.layout.running, version: r.runningVersion ?? null, sha256: r.runningSha },
        server: {
          name: r.manifest.name,
          version: r.manifest.version,
          sha256: r.manifest.partitions.root.sha256,
        },
        downgrade: r.downgrade,
      })}\n`,
    );
  } else if (r.upToDate)
    say(ctx, opts, `up to date: ${r.manifest.version} (slot ${r.device.layout.running})`);
  else if (!available)
    say(
      ctx,
      opts,
      `the server offers ${r.manifest.version}, older than the running ${r.runningVersion}: not an update`,
    );
  else say(ctx, opts, `update available: ${r.runningVersion ?? "unknown"} → ${r.manifest.version}`);
  return available ? 1 : 0;
}

async function withLock<T>(ctx: Context, fn: () => Promise<T>): Promise<T> {
  const dir = sysPath(ctx, "/run");
  await mkdir(dir, { recursive: true });
  const lock = await acquireLock(join(dir, "os-update.lock"), "another os-update");
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}

async function runApply(ctx: Context, opts: Options, deps: OsUpdateDeps): Promise<number> {
  return withLock(ctx, async () => {
    const { config, path } = await loadConfig(ctx, opts.config);
    const source = await makeSource(ctx, config, path);
    const r = await check(ctx, opts);
    const { manifest, device } = r;
    if (r.upToDate) {
      say(ctx, opts, `already up to date: ${manifest.version}`);
      return 0;
    }
    if (r.downgrade && !opts.allowDowngrade) {
      throw new EosError(
        "DOWNGRADE",
        `the server offers ${manifest.version}, older than the running ${r.runningVersion}`,
        {
          hint: "pass --allow-downgrade to install it anyway",
        },
      );
    }
    const target = otherSlot(device.layout.running);
    const slot = device.layout.slots[target];
    if (!slot)
      throw new EosError(
        "SLOT",
        `${device.layout.disk} has no ${SLOT_LABEL[target]}: this image has a single root slot`,
      );
    const root = manifest.partitions.root;
    if (root.size > slot.range.length) {
      throw new EosError(
        "SLOT",
        `the new root (${root.size} bytes) does not fit slot ${target} (${slot.range.length} bytes)`,
      );
    }
    // Invalidate the target first: a write cut short must never be bootable.
    const before = await readBootControl(device.esp);
    await writeBootControl(device.esp, markInvalid(before, target));
    say(
      ctx,
      opts,
      `writing ${manifest.version} into slot ${target} (${SLOT_LABEL[target]}) from ${source.describe}`,
    );
    const timing = await writeSlot({
      disk: device.layout.disk,
      range: slot.range,
      size: root.size,
      sha256: root.sha256,
      source,
      kind: "root",
      progress: progress(ctx.stderr, `slot ${target}`, root.size, { interactive: ctx.interactive }),
      log: (line) => ctx.stderr.write(`os-update: ${line}\n`),
      signal: ctx.signal,
      ...(deps.retryDelayMs === undefined ? {} : { retryDelayMs: deps.retryDelayMs }),
    });
    const tries = config.update.tries ?? DEFAULT_TRIES;
    await writeBootControl(
      device.esp,
      markTrial(
        await readBootControl(device.esp),
        target,
        { version: manifest.version, sha256: root.sha256, size: root.size },
        tries,
      ),
    );
    const mib = root.size / 2 ** 20;
    const rate = (mib / timing.writeSeconds).toFixed(0);
    say(
      ctx,
      opts,
      `wrote ${mib.toFixed(1)} MiB in ${timing.writeSeconds.toFixed(2)} s (${rate} MiB/s), verified in ${timing.verifySeconds.toFixed(2)} s`,
    );
    say(
      ctx,
      opts,
      `slot ${target} verified (sha256 ${root.sha256.slice(0, 16)}…) and marked for ${tries} trial boots`,
    );
    if (!device.layout.online) {
      say(ctx, opts, `${device.layout.disk} boots ${manifest.version} on trial at its next start`);
      return 0;
    }
    if (opts.reboot) {
      say(ctx, opts, "rebooting into the trial slot");
      await deps.boot.reboot();
      return 0;
    }
    const current = await readFile(sysPath(ctx, "/proc/cmdline"), "utf8");
    const cmdline = kexecCommandLine(current, slot.partition.uniqueGuid, target);
    await withSlotMounted(device.layout.disk, slot.range, sysPath(ctx, "/run/os-update"), async (dir) => {
      const { kernel, initrd } = await findKernel(dir);
      await deps.boot.kexecLoad(kernel, initrd, cmdline);
    });
    say(ctx, opts, `kexec into slot ${target}: ${cmdline}`);
    await deps.boot.kexecExec();
    return 0;
  });
}

async function runCommit(ctx: Context, opts: Options, deps: OsUpdateDeps): Promise<number> {
  if (opts.rootDevice === undefined) {
    const cmdline = parseKernelCommandLine(
      await readFile(sysPath(ctx, "/proc/cmdline"), "utf8").catch(() => ""),
    );
    if (!cmdline.commitUpdate) {
      say(ctx, opts, "not a trial boot (no COMMIT_UPDATE on the kernel command line): nothing to commit");
      return 0;
    }
  }
  return withLock(ctx, async () => {
    const device = await openDevice(ctx, opts);
    const vars = await readBootControl(device.esp);
    const state = readBootState(vars);
    let running: Slot;
    if (device.layout.online) running = device.layout.running;
    else {
      if (!state.trial) {
        say(ctx, opts, `no slot on trial: slot ${state.defaultSlot} is the default`);
        return 0;
      }
      running = state.trial;
    }
    const { vars: next, changed } = commitSlot(vars, running);
    if (changed) await writeBootControl(device.esp, next);
    say(
      ctx,
      opts,
      changed
        ? `committed slot ${running} (${state.slots[running].version ?? "?"})`
        : `slot ${running} is already the default`,
    );
    if (opts.reboot) await deps.boot.reboot();
    return 0;
  });
}

async function runRollback(ctx: Context, opts: Options, deps: OsUpdateDeps): Promise<number> {
  return withLock(ctx, async () => {
    const device = await openDevice(ctx, opts);
    const vars = await readBootControl(device.esp);
    const state = readBootState(vars);
    const from = device.layout.online ? device.layout.running : state.defaultSlot;
    const target = otherSlot(from);
    const slot = device.layout.slots[target];
    const record = state.slots[target];
    if (!slot)
      throw new EosError("SLOT", `${device.layout.disk} has no ${SLOT_LABEL[target]} to roll back to`);
    if (!record.sha256 || !record.size) {
      throw new EosError("SLOT", `slot ${target} holds no verified root (it was never completely written)`, {
        hint: "nothing to roll back to",
      });
    }
    const handle = await open(device.layout.disk, "r");
    let sha: string;
    try {
      sha = await hashRange(handle, slot.range.offset, record.size);
    } finally {
      await handle.close();
    }
    if (sha !== record.sha256) {
      throw new EosError(
        "HASH_MISMATCH",
        `slot ${target} does not verify (sha256 ${sha}, recorded ${record.sha256}): refusing to roll back`,
      );
    }
    await writeBootControl(device.esp, rollbackTo(vars, target));
    say(
      ctx,
      opts,
      `slot ${target} (${record.version ?? "?"}) verified and made the default${opts.reboot ? "; rebooting" : "; reboot to use it"}`,
    );
    if (opts.reboot) await deps.boot.reboot();
    return 0;
  });
}

async function runFirmware(ctx: Context, opts: Options): Promise<number> {
  return withLock(ctx, async () => {
    const { config, path } = await loadConfig(ctx, opts.config);
    const source = await makeSource(ctx, config, path);
    const manifest = await fetchVerifiedManifest(ctx, config, source);
    const firmware = manifest.partitions.firmware;
    if (!firmware)
      throw new EosError("MANIFEST", `${manifest.name} ${manifest.version} has no firmware partition`);
    const esp = opts.esp ?? sysPath(ctx, DEFAULT_ESP);
    await readBootControl(esp); // the ESP must be the mounted one, with its boot control block
    const result = await updateFirmware({ source, firmware, esp, workDir: sysPath(ctx, "/run/os-update") });
    say(
      ctx,
      opts,
      `firmware of ${manifest.version}: ${result.updated.length} files written, ${result.removed.length} removed; EFI/ kept`,
    );
    if (opts.json) ctx.stdout.write(`${JSON.stringify({ version: manifest.version, ...result })}\n`);
    return 0;
  });
}

async function runRead(ctx: Context, opts: Options): Promise<number> {
  if (!opts.server) throw usageError("--read needs --server USER@HOST");
  const port = opts.port === undefined ? undefined : Number(opts.port);
  if (port !== undefined && !(Number.isInteger(port) && port > 0 && port < 65536))
    throw usageError(`--port: not a port: ${opts.port}`);
  const stream = sshOriginalRead(
    { server: opts.server, pkey: opts.pkey, port, knownHosts: opts.knownHosts },
    opts.read as string,
    opts.firmware ? "firmware" : "root",
  );
  await pipeline(stream, ctx.stdout, { end: false });
  return 0;
}

export async function osUpdateMain(
  argv: string[],
  ctx: Context,
  deps: OsUpdateDeps = { boot: systemBootActions() },
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
    .option("--read <name>", "write the image's raw root stream to stdout (SSH, with --server and --pkey)")
    .option("--server <user@host>", "update server for --read")
    .option("--pkey <file>", "SSH private key for --read")
    .option("--port <port>", "SSH port for --read (default 22)")
    .option(
      "--known-hosts <file>",
      "pin the server's host key for --read (default: accept a new host key once)",
    )
    .option("--config <file>", "configuration (default /etc/os-update.yml)")
    .option("--root-device <disk>", "act on this disk (image file or block device), not the running system")
    .option("--esp <path>", "where the ESP is mounted (default /boot/efi)")
    .option("--allow-downgrade", "accept a server version older than the running one")
    .option("--json", "machine-readable output (--check)");
  let opts: Options = {};
  program.action((o: Options) => {
    opts = o;
  });
  const early = await parseProgram(program, argv);
  if (early !== undefined) return early;
  const actions = (["check", "apply", "commit", "rollback", "firmware", "read"] as const).filter(
    (a) => opts[a] !== undefined && opts[a] !== false,
  );
  if (opts.read !== undefined) return runRead(ctx, opts);
  if (actions.length !== 1) {
    throw usageError(
      "give exactly one of --check, --apply, --commit, --rollback, --firmware, --read",
      "see os-update --help",
    );
  }
  switch (actions[0]) {
    case "check":
      return runCheck(ctx, opts);
    case "apply":
      return runApply(ctx, opts, deps);
    case "commit":
      return runCommit(ctx, opts, deps);
    case "rollback":
      return runRollback(ctx, opts, deps);
    case "firmware":
      return runFirmware(ctx, opts);
    default:
      return 2;
  }
}
