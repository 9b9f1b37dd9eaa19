/**
 * The flake registry on a device: set up (LUKS2 + XFS labelled INSTANCE, the
 * key sealed in the TPM or read from a key file), activate (open, mount at
 * /var/lib/containers/storage, create the flakes directories), stop, status,
 * and the boot service's sequence (grow p.spare, first-boot set-up, activate).
 * Nothing here ever formats or repairs a registry that fails to open or
 * mount: only `--setup` formats, and only a blank device unless --force.
 */
import { randomBytes } from "node:crypto";
import { chmod, mkdir, readFile, readdir, realpath, stat, statfs } from "node:fs/promises";
import { join } from "node:path";
import { EosError, errorMessage } from "../../core/errors.ts";
import {
  KEY_BYTES,
  REGISTRY_BOOT_REPORT,
  REGISTRY_DIRS,
  REGISTRY_FS_LABEL,
  REGISTRY_MAPPER,
  REGISTRY_MOUNT,
  SETUP_INCOMPLETE_LABEL,
  checkMapperName,
  checkRegistrySize,
  decodeToken,
  describeSignature,
  encodeToken,
  parseBlkidExport,
  setupCutShort,
  type KeyProviderName,
  type RegistryToken,
} from "../../core/registry/registry.ts";
import { sysPath, type Context } from "../context.ts";
import { crashPoint } from "../crash-point.ts";
import { openBlockSource } from "../files.ts";
import type { ProcessRunner } from "../process.ts";
import {
  isLuks,
  luksClose,
  luksFormat,
  luksOpen,
  luksSetLabel,
  luksStatus,
  luksTokenImport,
  luksTokens,
  mustRun,
  probeSignatures,
  runTool,
} from "./luks.ts";
import { tpmMissingReason, tpmSeal, tpmUnseal, type TpmOptions } from "./tpm.ts";

export interface RegistryOptions {
  /** Key provider for --setup (default: tpm2 when a TPM is there, else an error unless keyFile). */
  provider?: KeyProviderName;
  keyFile?: string;
  pcrs?: number[];
  tpm?: TpmOptions;
  mapper?: string;
  mountPoint?: string;
  log: (line: string) => void;
  proc: ProcessRunner;
}

function mapperOf(o: RegistryOptions): string {
  return checkMapperName(o.mapper ?? REGISTRY_MAPPER);
}

function mountOf(o: RegistryOptions): string {
  return o.mountPoint ?? REGISTRY_MOUNT;
}

export async function deviceBytes(device: string): Promise<number> {
  const src = await openBlockSource(device);
  try {
    return src.size;
  } finally {
    await src.close();
  }
}

/** The device must exist and be a block device or (host tests, images) a regular file. */
export async function checkDevice(device: string): Promise<{ path: string; block: boolean; rdev: number }> {
  const st = await stat(device).catch(() => undefined);
  if (!st) throw new EosError("NOT_FOUND", `${device} does not exist`);
  if (!st.isBlockDevice() && !st.isFile()) {
    throw new EosError("REGISTRY", `${device} is neither a block device nor a file`);
  }
  return { path: await realpath(device), block: st.isBlockDevice(), rdev: st.rdev };
}

/** Mounted, or held by device-mapper/md: in use, never touched. */
export async function inUseReason(proc: ProcessRunner, device: string): Promise<string | undefined> {
  const d = await checkDevice(device);
  if (!d.block) return undefined;
  const majMin = `${Math.floor(d.rdev / 256)}:${d.rdev % 256}`;
  const holders = await readdir(`/sys/dev/block/${majMin}/holders`).catch(() => [] as string[]);
  if (holders.length > 0) return `${device} is held by ${holders.join(", ")} (an open LUKS mapping?)`;
  const mountinfo = await readFile("/proc/self/mountinfo", "utf8").catch(() => "");
  for (const line of mountinfo.split("\n")) {
    const f = line.split(" ");
    if (f[2] === majMin) return `${device} is mounted on ${f[4]}`;
  }
  const swaps = await readFile("/proc/swaps", "utf8").catch(() => "");
  if (swaps.split("\n").some((l) => l.split(/\s+/)[0] === d.path)) return `${device} is in use as swap`;
  return undefined;
}

/** Whether DEVICE is a registry whose set-up was cut short (see SETUP_INCOMPLETE_LABEL). */
export async function setupWasCutShort(proc: ProcessRunner, device: string): Promise<boolean> {
  return setupCutShort(parseBlkidExport(await probeSignatures(proc, device)));
}

/** What the device holds ("an xfs file system labelled X"), or undefined when blank. */
export async function foundOn(proc: ProcessRunner, device: string): Promise<string | undefined> {
  const probe = describeSignature(parseBlkidExport(await probeSignatures(proc, device)));
  if (probe) return probe;
  if (await isLuks(proc, device)) return "a LUKS header";
  return undefined;
}

async function readKeyFile(path: string): Promise<Buffer> {
  const st = await stat(path).catch(() => undefined);
  if (!st?.isFile()) throw new EosError("NOT_FOUND", `key file ${path} does not exist`);
  if ((st.mode & 0o077) !== 0) {
    throw new EosError(
      "REGISTRY",
      `key file ${path} is readable by others (mode ${(st.mode & 0o777).toString(8)})`,
      {
        hint: `chmod 600 ${path}`,
      },
    );
  }
  const key = await readFile(path);
  if (key.length < 32)
    throw new EosError("REGISTRY", `key file ${path} holds ${key.length} bytes: at least 32 needed`);
  return key;
}

function chooseProvider(o: RegistryOptions): KeyProviderName {
  if (o.provider) return o.provider;
  if (o.keyFile) return "keyfile";
  const missing = tpmMissingReason(o.tpm);
  if (missing) {
    throw new EosError("TPM", `${missing}: cannot seal the registry key`, {
      hint: "use --key-file FILE on machines without a TPM (less secure: whoever reads the file opens the registry)",
    });
  }
  return "tpm2";
}

export interface SetupResult {
  device: string;
  provider: KeyProviderName;
  found: string | undefined;
}

/**
 * luksFormat + XFS. Refuses a device that is in use, too small, or that
 * holds anything blkid or cryptsetup recognise, unless `force`. The key is
 * sealed before the device is touched, so a TPM failure changes nothing.
 */
export async function setupRegistry(
  device: string,
  o: RegistryOptions & { force?: boolean; mkfs?: boolean },
): Promise<SetupResult> {
  await checkDevice(device);
  const busy = await inUseReason(o.proc, device);
  if (busy) throw new EosError("REFUSED", busy, { hint: "flake-registry --stop, or umount it first" });
  const found = await foundOn(o.proc, device);
  if (found && !o.force) {
    throw new EosError("REFUSED", `${device} holds ${found}: not formatting it`, {
      hint: "flake-registry --setup --force DEV destroys what is on it",
    });
  }
  checkRegistrySize(device, await deviceBytes(device));
  const provider = chooseProvider(o);
  const key = provider === "tpm2" ? randomBytes(KEY_BYTES) : await readKeyFile(o.keyFile as string);
  try {
    let token: RegistryToken = { provider: "keyfile" };
    if (provider === "tpm2") {
      const sealed = await tpmSeal(o.proc, key, o.pcrs ?? [], o.tpm);
      token = { provider: "tpm2", ...sealed };
    }
    if (found) {
      o.log(`${device}: --force: wiping ${found}`);
      await mustRun(o.proc, ["wipefs", "--all", "--quiet", device], { what: `wipefs ${device}` });
    }
    o.log(`${device}: LUKS2 (key ${provider === "tpm2" ? "sealed in the TPM" : `from ${o.keyFile}`})`);
    await luksFormat(o.proc, device, key, SETUP_INCOMPLETE_LABEL);
    crashPoint("registry:formatted");
    await luksTokenImport(o.proc, device, encodeToken(token, 0));
    crashPoint("registry:token");
    if (o.mkfs ?? true) {
      const mapper = mapperOf(o);
      await luksOpen(o.proc, device, mapper, key);
      try {
        o.log(`${device}: XFS labelled ${REGISTRY_FS_LABEL}`);
        await mustRun(o.proc, ["mkfs.xfs", "-q", "-L", REGISTRY_FS_LABEL, `/dev/mapper/${mapper}`], {
          what: "mkfs.xfs",
        });
      } finally {
        await luksClose(o.proc, mapper);
      }
    }
    crashPoint("registry:before-complete");
    await luksSetLabel(o.proc, device, "");
  } finally {
    key.fill(0);
  }
  return { device, provider, found };
}

/** The key that opens DEVICE, from the provider its LUKS2 token names (or the key file given). */
export async function unlockKey(
  device: string,
  o: RegistryOptions,
): Promise<{ key: Buffer; provider: KeyProviderName }> {
  if (!(await isLuks(o.proc, device))) {
    const what = await foundOn(o.proc, device);
    throw new EosError(
      "REGISTRY",
      `${device} has no LUKS header${what ? ` (it holds ${what})` : " (blank or corrupt)"}`,
      {
        hint: "a blank device is set up with flake-registry --setup DEV",
      },
    );
  }
  if (o.keyFile) return { key: await readKeyFile(o.keyFile), provider: "keyfile" };
  const tokens = (await luksTokens(o.proc, device)).map((t) =>
    decodeToken(t.json, `${device} token ${t.id}`),
  );
  const tpm = tokens.find((t): t is Extract<RegistryToken, { provider: "tpm2" }> => t?.provider === "tpm2");
  if (tpm) {
    const missing = tpmMissingReason(o.tpm);
    if (missing) throw new EosError("TPM", `${device}: its key is sealed in a TPM, and there is ${missing}`);
    return { key: await tpmUnseal(o.proc, tpm, o.tpm), provider: "tpm2" };
  }
  throw new EosError("REGISTRY", `${device}: no TPM-sealed key in its LUKS2 header`, {
    hint: "its key comes from a key file: flake-registry --activate DEV --key-file FILE",
  });
}

async function mountedSource(mountPoint: string): Promise<string | undefined> {
  const mountinfo = await readFile("/proc/self/mountinfo", "utf8").catch(() => "");
  let source: string | undefined;
  for (const line of mountinfo.split("\n")) {
    const f = line.split(" ");
    if (f[4] === mountPoint) {
      const dash = f.indexOf("-");
      source = f[dash + 2];
    }
  }
  return source;
}

async function sameDevice(a: string, b: string): Promise<boolean> {
  const [sa, sb] = await Promise.all([stat(a).catch(() => undefined), stat(b).catch(() => undefined)]);
  return Boolean(sa && sb && sa.rdev === sb.rdev && sa.isBlockDevice());
}

export interface ActivateResult {
  device: string;
  mapper: string;
  mountPoint: string;
  provider: KeyProviderName | "already-open";
  grownBytes?: number;
}

/**
 * Opens and mounts. An already open mapping of the same device is reused
 * (mounted if it is not); a mount failure leaves the mapping open and
 * unmounted for the admin to inspect (`xfs_repair -n`), never repaired here.
 */
export async function activateRegistry(
  device: string,
  o: RegistryOptions & { growFs?: boolean },
): Promise<ActivateResult> {
  const d = await checkDevice(device);
  const mapper = mapperOf(o);
  const mountPoint = mountOf(o);
  const mapperPath = `/dev/mapper/${mapper}`;
  let provider: ActivateResult["provider"] = "already-open";
  const status = await luksStatus(o.proc, mapper);
  if (status) {
    if (!(await sameDevice(status.device, d.path))) {
      throw new EosError("REGISTRY", `the mapping ${mapper} is open on ${status.device}, not ${device}`, {
        hint: "flake-registry --stop first",
      });
    }
  } else {
    const busy = await inUseReason(o.proc, device);
    if (busy) throw new EosError("REFUSED", busy);
    const { key, provider: p } = await unlockKey(device, o);
    try {
      await luksOpen(o.proc, device, mapper, key);
    } finally {
      key.fill(0);
    }
    provider = p;
  }
  await mkdir(mountPoint, { recursive: true });
  const src = await mountedSource(mountPoint);
  if (src && (await sameDevice(src, mapperPath))) {
    o.log(`${mapperPath} is already mounted on ${mountPoint}`);
  } else {
    if (src) throw new EosError("REGISTRY", `${mountPoint} already has ${src} mounted on it`);
    const r = await runTool(o.proc, ["mount", "-t", "xfs", "-o", "noatime", mapperPath, mountPoint]);
    if (r.code !== 0) {
      throw new EosError(
        "REGISTRY",
        `${device}: opened, but its file system does not mount on ${mountPoint}: ${r.stderr.split("\n").slice(-2).join(" | ")}`,
        {
          hint: `nothing was repaired or formatted; ${mapperPath} stays open for inspection: xfs_repair -n ${mapperPath} (then xfs_repair without -n if you choose), flake-registry --activate ${device}`,
        },
      );
    }
  }
  let grownBytes: number | undefined;
  if (o.growFs) {
    const before = await deviceFsBytes(mountPoint);
    await mustRun(o.proc, ["xfs_growfs", "-d", mountPoint], { what: `xfs_growfs ${mountPoint}` }).catch(
      (e: unknown) => o.log(`xfs_growfs: ${errorMessage(e)} (the registry stays usable at its old size)`),
    );
    const after = await deviceFsBytes(mountPoint);
    if (after > before) grownBytes = after - before;
  }
  for (const dir of REGISTRY_DIRS) await mkdir(join(mountPoint, dir), { recursive: true });
  await chmod(join(mountPoint, "tmp"), 0o1777);
  return { device, mapper, mountPoint, provider, ...(grownBytes ? { grownBytes } : {}) };
}

export async function deviceFsBytes(mountPoint: string): Promise<number> {
  const s = await statfs(mountPoint).catch(() => undefined);
  return s ? s.blocks * s.bsize : 0;
}

export async function stopRegistry(o: RegistryOptions): Promise<{ unmounted: boolean; closed: boolean }> {
  const mapper = mapperOf(o);
  const mountPoint = mountOf(o);
  let unmounted = false;
  const src = await mountedSource(mountPoint);
  if (src && (await sameDevice(src, `/dev/mapper/${mapper}`))) {
    // podman's overlay driver bind-mounts its own directory below: -R takes those too.
    await mustRun(o.proc, ["umount", "--recursive", mountPoint], {
      what: `umount ${mountPoint}`,
      hint: "stop the containers using it first (podman stop --all)",
    });
    unmounted = true;
  }
  let closed = false;
  if (await luksStatus(o.proc, mapper)) {
    await luksClose(o.proc, mapper);
    closed = true;
  }
  return { unmounted, closed };
}

export interface RegistryStatus {
  mapper: string;
  open: boolean;
  device?: string;
  mounted: boolean;
  mountPoint: string;
  sizeBytes?: number;
  freeBytes?: number;
  bootReport?: string;
}

export async function registryStatus(ctx: Context, o: RegistryOptions): Promise<RegistryStatus> {
  const mapper = mapperOf(o);
  const mountPoint = mountOf(o);
  const st = await luksStatus(o.proc, mapper);
  const src = await mountedSource(mountPoint);
  const mounted = Boolean(src && (await sameDevice(src, `/dev/mapper/${mapper}`)));
  const out: RegistryStatus = { mapper, open: Boolean(st), mounted, mountPoint };
  if (st) out.device = st.device;
  if (mounted) {
    const s = await statfs(mountPoint);
    out.sizeBytes = s.blocks * s.bsize;
    out.freeBytes = s.bavail * s.bsize;
  }
  const report = await readFile(sysPath(ctx, REGISTRY_BOOT_REPORT), "utf8").catch(() => undefined);
  if (report) out.bootReport = report.trim();
  return out;
}
