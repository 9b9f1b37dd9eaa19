/**
 * Per-device bearer tokens. The tokens directory holds one file per device
 * named after it, containing the sha256 of the device's token: a leaked
 * directory listing or backup gives no usable credential, and deleting the
 * file revokes the device.
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

export class TokenStore {
  private readonly dir: string;
  private loadedAt = -1;
  /** Date.now() of the last full read, to bound re-reads on unknown tokens. */
  private readAt = -Infinity;
  private entries: Array<{ device: string; hash: Buffer }> = [];

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
    const entries: Array<{ device: string; hash: Buffer }> = [];
    for (const device of await readdir(this.dir)) {
      if (!DEVICE_NAME.test(device)) continue;
      const hash = await this.readHash(device);
      if (hash) entries.push({ device, hash });
    }
    this.entries = entries;
    this.loadedAt = dirMtimeMs;
    this.readAt = Date.now();
  }

  private async readHash(device: string): Promise<Buffer | undefined> {
    const text = (await readFile(join(this.dir, device), "utf8").catch(() => "")).trim();
    return /^[0-9a-f]{64}$/.test(text) ? Buffer.from(text, "hex") : undefined;
  }

  private match(hash: Buffer): string | undefined {
    let found: string | undefined;
    for (const entry of this.entries) {
      if (timingSafeEqual(entry.hash, hash)) found = entry.device;
    }
    return found;
  }

  /** The device a bearer token belongs to, or undefined. */
  async authenticate(token: string): Promise<string | undefined> {
    await this.refresh();
    const hash = digest(token);
    const found = this.match(hash);
    if (found !== undefined) {
      // A file edited in place leaves the directory's mtime alone: the device's
      // own file (65 bytes) is read again for every request it makes.
      const current = await this.readHash(found);
      if (current && timingSafeEqual(current, hash)) return found;
      await this.load(this.loadedAt);
      return this.match(hash);
    }
    // An unknown token may have been written into a file in place: re-read, at most once a second.
    if (Date.now() - this.readAt < 1000) return undefined;
    await this.load(this.loadedAt);
    return this.match(hash);
  }

  async add(device: string): Promise<string> {
    if (!DEVICE_NAME.test(device)) {
      throw new EosError("USAGE", `device name ${JSON.stringify(device)}: letters, digits and . _ - only`);
    }
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const token = randomBytes(32).toString("base64url");
    await atomicWriteFile(join(this.dir, device), `${digest(token).toString("hex")}\n`, 0o600);
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

  async list(): Promise<string[]> {
    await this.refresh();
    return this.entries.map((e) => e.device).sort();
  }
}
