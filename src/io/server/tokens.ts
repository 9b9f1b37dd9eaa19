/**
 * Per-device bearer tokens. The tokens directory holds one file per device
 * named after it, containing the sha256 of the device's token: a leaked
 * directory listing or backup gives no usable credential, and deleting the
 * file revokes the device. A file that starts with `enrolment ` holds the
 * fleet's enrolment key instead: it is good for POST /v1/enrol only, where a
 * device exchanges it for a token of its own (fleet/device-tokens.ts).
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { mkdir, readdir, readFile, stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import { EosError } from "../../core/errors.ts";
import { atomicWriteFile } from "../files.ts";

export const DEVICE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

function digest(token: string): Buffer {
  return createHash("sha256").update(token, "utf8").digest();
}

interface Entry {
  device: string;
  hash: Buffer;
  enrolment: boolean;
}

const ENROLMENT = "enrolment ";

export class TokenStore {
  private readonly dir: string;
  private loadedAt = -1;
  /** Date.now() of the last full read, to bound re-reads on unknown tokens. */
  private readAt = -Infinity;
  private entries: Entry[] = [];

  constructor(dir: string) {
    this.dir = dir;
  }

  private async refresh(): Promise<void> {
    // Re-read all when the directory changed (adding or deleting a file bumps its mtime).
    const st = await stat(this.dir).catch(() => undefined);
    if (!st) throw new EosError("CONFIG", `tokens directory ${this.dir} does not exist`);
    if (st.mtimeMs === this.loadedAt) return;
    await this.load(st.mtimeMs);
  }

  private async load(dirMtimeMs: number): Promise<void> {
    const entries: Entry[] = [];
    for (const device of await readdir(this.dir)) {
      if (!DEVICE_NAME.test(device)) continue;
      const entry = await this.readEntry(device);
      if (entry) entries.push(entry);
    }
    this.entries = entries;
    this.loadedAt = dirMtimeMs;
    this.readAt = Date.now();
  }

  private async readEntry(device: string): Promise<Entry | undefined> {
    const text = (await readFile(join(this.dir, device), "utf8").catch(() => "")).trim();
    const enrolment = text.startsWith(ENROLMENT);
    const hex = enrolment ? text.slice(ENROLMENT.length) : text;
    return /^[0-9a-f]{64}$/.test(hex) ? { device, hash: Buffer.from(hex, "hex"), enrolment } : undefined;
  }

  private match(hash: Buffer): Entry | undefined {
    let found: Entry | undefined;
    for (const entry of this.entries) {
      if (timingSafeEqual(entry.hash, hash)) found = entry;
    }
    return found;
  }

  private async find(token: string): Promise<Entry | undefined> {
    await this.refresh();
    const hash = digest(token);
    const found = this.match(hash);
    if (found !== undefined) {
      // A file edited in place leaves the directory's mtime alone: the device's
      // own file (65 bytes) is read again for every request it makes.
      const current = await this.readEntry(found.device);
      if (current && timingSafeEqual(current.hash, hash)) return current;
      await this.load(this.loadedAt);
      return this.match(hash);
    }
    // An unknown token may have been written into a file in place: re-read, at most once a second.
    if (Date.now() - this.readAt < 1000) return undefined;
    await this.load(this.loadedAt);
    return this.match(hash);
  }

  /** The device a bearer token belongs to, or undefined (an enrolment key is no device's token). */
  async authenticate(token: string): Promise<string | undefined> {
    const found = await this.find(token);
    return found && !found.enrolment ? found.device : undefined;
  }

  /** What a token is here: a device's own, or an enrolment key (by its name). */
  async identify(token: string): Promise<{ name: string; enrolment: boolean } | undefined> {
    const found = await this.find(token);
    return found && { name: found.device, enrolment: found.enrolment };
  }

  /** A token for a device, or (enrolment) the fleet's key that devices exchange for their own. */
  async add(device: string, enrolment = false): Promise<string> {
    if (!DEVICE_NAME.test(device)) {
      throw new EosError("USAGE", `device name ${JSON.stringify(device)}: letters, digits and . _ - only`);
    }
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const token = randomBytes(32).toString("base64url");
    const line = `${enrolment ? ENROLMENT : ""}${digest(token).toString("hex")}\n`;
    await atomicWriteFile(join(this.dir, device), line, 0o600);
    return token;
  }

  async revoke(device: string): Promise<void> {
    if (!DEVICE_NAME.test(device))
      throw new EosError("USAGE", `not a device name: ${JSON.stringify(device)}`);
    try {
      await unlink(join(this.dir, device));
    } catch {
      throw new EosError("NOT_FOUND", `no token for device ${device} in ${this.dir}`);
    }
  }

  async list(): Promise<Array<{ device: string; enrolment: boolean }>> {
    await this.refresh();
    return this.entries
      .map(({ device, enrolment }) => ({ device, enrolment }))
      .sort((a, b) => a.device.localeCompare(b.device));
  }
}
