/**
 * A device's update settings: /etc/os-update.yml (the original map shape),
 * the transport it names (HTTPS with a token, or SSH with the fleet key) and
 * the release keys it trusts.
 */
import { mkdir, readFile, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { DeviceConfig } from "../../core/config.ts";
import { fnv1a } from "../../core/fnv.ts";
import { EosError, errorMessage } from "../../core/errors.ts";
import { parseWindow, type MaintenanceWindow } from "../../core/fleet/window.ts";
import {
  decodeManifest,
  decodeSignatures,
  verifyManifestSignature,
  type Manifest,
} from "../../core/manifest.ts";
import { sysPath, type Context } from "../context.ts";
import { atomicWriteFile } from "../files.ts";
import { loadTrustedKeys } from "../keys.ts";
import { httpSource, sshSource, type UpdateSource } from "./source.ts";
import { deviceToken } from "./enrolment.ts";
import { mirroredSource } from "./mirrors.ts";

const DEFAULT_KEYS = "/usr/share/eos/keys";
const CACHE_DIR = "/run/os-update";

export interface DeviceSetup {
  config: DeviceConfig;
  /** The file the configuration came from (named in errors). */
  path: string;
}

/**
 * Reads /etc/os-update.yml. The parsed result is kept in /run (tmpfs, root's)
 * while the file's identity and times are unchanged, so a periodic --check
 * loads neither the YAML parser nor the schema library.
 */
export async function loadDeviceConfig(ctx: Context, file: string | undefined): Promise<DeviceSetup> {
  const path = file ?? sysPath(ctx, "/etc/os-update.yml");
  const st = await stat(path).catch(() => undefined);
  if (!st?.isFile())
    throw new EosError("CONFIG", `${path}: cannot read the configuration`, { hint: "pass --config FILE" });
  const stamp = [st.dev, st.ino, st.size, st.mtimeMs, st.ctimeMs].join(":");
  const cacheFile = join(sysPath(ctx, CACHE_DIR), `config-${fnv1a(path)}.json`);
  try {
    const cached = JSON.parse(await readFile(cacheFile, "utf8")) as {
      path?: string;
      stamp?: string;
      config?: DeviceConfig;
    };
    if (cached.path === path && cached.stamp === stamp && cached.config)
      return { config: cached.config, path };
  } catch {
    // no cache yet, or a broken one: parse the file
  }
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch {
    throw new EosError("CONFIG", `${path}: cannot read the configuration`, { hint: "pass --config FILE" });
  }
  const { deviceConfigSchema, parseYamlConfig } = await import("../../core/config.ts");
  const config = parseYamlConfig(text, path, deviceConfigSchema);
  try {
    await mkdir(dirname(cacheFile), { recursive: true, mode: 0o755 });
    await atomicWriteFile(cacheFile, JSON.stringify({ path, stamp, config }), 0o600);
  } catch {
    // the cache only saves time
  }
  return { config, path };
}

export async function openUpdateSource(ctx: Context, setup: DeviceSetup): Promise<UpdateSource> {
  const u = setup.config.update;
  if (u.url) {
    const token = await deviceToken(ctx, setup, (line) => ctx.stderr.write(`${line}\n`));
    if (u.token && token === undefined) {
      throw new EosError("AUTH", `${setup.path}: update.token: cannot read ${u.token}`, {
        hint: "run `fleet --getkey`",
      });
    }
    const ca = u.ca ? await readFile(u.ca) : undefined;
    const sources = [u.url, ...(u.mirrors ?? [])].map((url) => httpSource({ url, name: u.name, token, ca }));
    return mirroredSource(sources, (line) => ctx.stderr.write(`os-update: ${line}\n`));
  }
  if (u.mirrors?.length)
    throw new EosError(
      "CONFIG",
      `${setup.path}: update.mirrors: needs update.url (mirrors are HTTPS servers)`,
    );
  if (u.server) {
    return sshSource({
      server: u.server,
      name: u.name,
      pkey: u.pkey,
      port: u.port,
      knownHosts: u.known_hosts,
      proc: ctx.proc,
    });
  }
  throw new EosError("CONFIG", `${setup.path}: update: needs url (HTTPS) or server (SSH)`);
}

/** The server's manifest, accepted only with a signature by a key this device trusts. */
export async function fetchVerifiedManifest(
  ctx: Context,
  setup: DeviceSetup,
  source: UpdateSource,
): Promise<Manifest> {
  return (await fetchOffer(ctx, setup, source)).manifest;
}

/** The server's verified manifest, and the maintenance window it gave this device (none: any time). */
export async function fetchOffer(
  ctx: Context,
  setup: DeviceSetup,
  source: UpdateSource,
): Promise<{ manifest: Manifest; window: MaintenanceWindow | undefined }> {
  const keys = await loadTrustedKeys(setup.config.update.keys ?? [sysPath(ctx, DEFAULT_KEYS)]);
  const { manifest, signature, window } = await source.fetchManifest();
  verifyManifestSignature(manifest, decodeSignatures(signature, `${source.describe} signature`), keys);
  const verified = decodeManifest(manifest, `${source.describe} manifest`);
  if (window === undefined) return { manifest: verified, window: undefined };
  try {
    return { manifest: verified, window: parseWindow(window) };
  } catch (error) {
    // Not knowing when it may switch, the device does not guess "any time".
    throw new EosError("HTTP", `${source.describe}: the maintenance window it sent: ${errorMessage(error)}`);
  }
}

export interface SshTransport {
  name?: string | undefined;
  server?: string | undefined;
  pkey?: string | undefined;
  port?: number | undefined;
  knownHosts?: string | undefined;
}

/** os-update.yml with the command line's transport over it (SSH, as the original's --read/--server/--pkey). */
export async function loadSetupWith(
  ctx: Context,
  file: string | undefined,
  t: SshTransport | undefined,
): Promise<DeviceSetup> {
  if (!t) return loadDeviceConfig(ctx, file);
  let setup: DeviceSetup;
  try {
    setup = await loadDeviceConfig(ctx, file);
  } catch (error) {
    // Everything the call needs is on the command line: the file is optional then.
    if (!(error instanceof EosError && error.code === "CONFIG" && t.name && t.server)) throw error;
    setup = { config: { update: { name: t.name } }, path: "(command line)" };
  }
  const u = { ...setup.config.update };
  if (t.name !== undefined) u.name = t.name;
  if (t.server !== undefined) {
    u.server = t.server;
    delete u.url; // --server chooses SSH, as the original's only transport
    delete u.mirrors;
  }
  if (t.pkey !== undefined) u.pkey = t.pkey;
  if (t.port !== undefined) u.port = t.port;
  if (t.knownHosts !== undefined) u.known_hosts = t.knownHosts;
  if (!u.server && !u.url) {
    throw new EosError("USAGE", "--read NAME needs --server USER@HOST (or update.server in os-update.yml)");
  }
  return { config: { ...setup.config, update: u }, path: setup.path };
}
