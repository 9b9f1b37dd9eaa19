/**
 * The token a device shows its update server. The image ships one
 * fleet-wide key (`fleet --getkey` puts it in /run/eos/fleet-token); on
 * first contact the device exchanges it (POST /v1/enrol) for an id and a
 * token of its own and keeps that on the encrypted registry when it is
 * mounted (else in /run/eos, for this boot). A copy of the image carries the
 * key but not the token: it enrols as a new device. A server without the
 * endpoint (older, or without a database) gets the key as before, and the
 * device says so once per boot; a key that is a device's own token (`token
 * add DEVICE`) is kept as it is, silently.
 */
import { createHash } from "node:crypto";
import { mkdir, readFile, stat, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { errorMessage } from "../../core/errors.ts";
import { sysPath, type Context } from "../context.ts";
import { deviceStatePath } from "./state-path.ts";
import { atomicWriteFile } from "../files.ts";
import type { DeviceSetup } from "./device-config.ts";
import { postJson, type PostAnswer } from "./post-json.ts";

export const DEFAULT_KEY = "/run/eos/fleet-token";
const TOKEN_FILE = "eos/device-token.json";
const ENROL_TIMEOUT_MS = 10_000;
const DEVICE_TOKEN = /^eosdev_[A-Za-z0-9_-]{20,200}$/;

/** What is kept: the token, the server it is for, and the key it was got with (or that is this device's own). */
interface Stored {
  url: string;
  device?: string;
  token?: string;
  /** sha256 of a key the server said is a device's own token: no enrolment for it. */
  own_key?: string;
}

const sha256 = (text: string) => createHash("sha256").update(text, "utf8").digest("hex");

/** On the registry when it is active (it survives reboots), else in /run. */
export const deviceTokenPath = (ctx: Context) => deviceStatePath(ctx, TOKEN_FILE);

async function readStored(path: string, url: string): Promise<Stored | undefined> {
  try {
    const s = JSON.parse(await readFile(path, "utf8")) as Stored;
    return s.url === url ? s : undefined;
  } catch {
    return undefined;
  }
}

const baseOf = (setup: DeviceSetup) => (setup.config.update.url ?? "").replace(/\/+$/, "");

async function readKey(ctx: Context, setup: DeviceSetup): Promise<string | undefined> {
  const file = setup.config.update.token ?? sysPath(ctx, DEFAULT_KEY);
  return (await readFile(file, "utf8").catch(() => undefined))?.trim();
}

async function hostHint(ctx: Context): Promise<string | undefined> {
  const name = (await readFile(sysPath(ctx, "/etc/hostname"), "utf8").catch(() => "")).trim();
  const hint = name.replace(/[^A-Za-z0-9._-]/g, "-").slice(0, 40);
  return /^[A-Za-z0-9]/.test(hint) ? hint : undefined;
}

async function sayOncePerBoot(ctx: Context, marker: string, line: string, warn: (l: string) => void) {
  const path = sysPath(ctx, marker);
  if (await stat(path).catch(() => undefined)) return;
  warn(line);
  await mkdir(dirname(path), { recursive: true }).catch(() => undefined);
  await writeFile(path, "").catch(() => undefined);
}

/**
 * The token for HTTPS requests: this device's own, enrolling first when it
 * has none for this server. Never throws for the enrolment itself: when it
 * cannot enrol now, it uses the key, and the request that follows says what
 * is wrong (or works, with a server that does not enrol).
 */
export async function deviceToken(
  ctx: Context,
  setup: DeviceSetup,
  warn: (line: string) => void,
): Promise<string | undefined> {
  const base = baseOf(setup);
  const path = await deviceTokenPath(ctx);
  const stored = await readStored(path, base);
  if (stored?.token) return stored.token;
  const key = await readKey(ctx, setup);
  if (key === undefined || stored?.own_key === sha256(key)) return key;
  const unsupported = `/run/eos/enrol-unsupported-${sha256(base).slice(0, 16)}`;
  if (await stat(sysPath(ctx, unsupported)).catch(() => undefined)) return key;
  let answer: PostAnswer;
  try {
    const ca = setup.config.update.ca ? await readFile(setup.config.update.ca) : undefined;
    const hint = await hostHint(ctx);
    const body = JSON.stringify(hint ? { hint } : {});
    answer = await postJson(new URL(`${base}/v1/enrol`), key, body, ca, ENROL_TIMEOUT_MS);
  } catch {
    return key; // unreachable now: the request that follows says so, and the next run enrols
  }
  if (answer.status === 404 || answer.status === 405) {
    await sayOncePerBoot(
      ctx,
      unsupported,
      `os-update: ${base} does not enrol devices: this device uses the fleet key as its token`,
      warn,
    );
    return key;
  }
  const keep = async (s: Stored) => {
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
    await atomicWriteFile(path, `${JSON.stringify(s)}\n`, 0o600);
  };
  if (answer.status === 409 && answer.error === "NOT_ENROLMENT_KEY") {
    await keep({ url: base, own_key: sha256(key) }).catch(() => undefined);
    return key;
  }
  if (answer.status === 429) {
    warn(`os-update: ${base} limits enrolments right now (HTTP 429): the next run enrols this device`);
    return key;
  }
  if (answer.status !== 201) return key;
  let enrolled: { device?: unknown; token?: unknown };
  try {
    enrolled = JSON.parse(answer.text) as typeof enrolled;
  } catch {
    return key;
  }
  if (typeof enrolled.device !== "string" || typeof enrolled.token !== "string") return key;
  if (!DEVICE_TOKEN.test(enrolled.token)) return key;
  try {
    await keep({ url: base, device: enrolled.device, token: enrolled.token });
  } catch (error) {
    // A token that cannot be kept would be a new device every run: stay on the key.
    warn(`os-update: cannot keep this device's token in ${path}: ${errorMessage(error)}`);
    return key;
  }
  warn(`os-update: enrolled with ${base} as device ${enrolled.device}`);
  return enrolled.token;
}
