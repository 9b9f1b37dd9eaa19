/**
 * The published image directory. Each published version is an immutable
 * directory under `.versions/NAME/`; the names the original's readers know
 * (`NAME.raw`, `NAME.manifest.json`, `.sig`, `NAME.raw.sha`) are symlinks into
 * it, switched by rename. Readers resolve one link (the manifest's) and take
 * everything from that version directory, so a reader never mixes versions,
 * and an open stream keeps reading the old version after a publish.
 */
import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import {
  access,
  mkdir,
  open,
  readdir,
  readFile,
  readlink,
  rename,
  rm,
  symlink,
  unlink,
} from "node:fs/promises";
import { join } from "node:path";
import { isSafeImageName } from "../../core/image-name.ts";
import { EosError } from "../../core/errors.ts";
import { readGpt, findPartition, partitionRange, type ByteRange } from "../../core/gpt.ts";
import { decodeManifest } from "../../core/manifest.ts";
import { atomicWriteFile } from "../files.ts";
import { acquireLock, type Lock } from "../lock.ts";
import { openBlockSource } from "../files.ts";
import { deltaFileName } from "./deltas.ts";
import type {
  ImageStore,
  PublishedVersion,
  PublishFiles,
  RangeReader,
  Staging,
  StreamKind,
  VersionFile,
} from "./store.ts";

export const DEFAULT_IMAGES_DIR = "/srv/www/fleet/os-images";

/** A file, or the part of it at `base` (a partition of the disk image): undefined when it is not there. */
async function fileReader(path: string, base = 0, length?: number): Promise<RangeReader | undefined> {
  let handle: FileHandle;
  try {
    handle = await open(path, "r");
  } catch {
    return undefined;
  }
  const size = length ?? (await handle.stat()).size;
  return {
    size,
    read: (buffer, offset, count, position) => handle.read(buffer, offset, count, base + position),
    stream: async (start, end) =>
      handle.createReadStream({
        start: base + start,
        end: base + end - 1,
        autoClose: false,
        highWaterMark: 1 << 20,
      }),
    close: () => handle.close(),
  };
}

/** When a version directory was published: its name ends in -<ms since 1970, base 36>-<6 hex>. */
export function publishedAt(vid: string): number | undefined {
  const m = /-([0-9a-z]{1,12})-[0-9a-f]{6}$/.exec(vid);
  return m ? parseInt(m[1] as string, 36) : undefined;
}

async function fsyncPath(path: string, directory = false): Promise<void> {
  const handle = await open(
    path,
    directory ? constants.O_RDONLY | constants.O_DIRECTORY : constants.O_RDONLY,
  );
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export class PublishedImages implements ImageStore {
  readonly dir: string;
  private readonly cache = new Map<string, PublishedVersion>();
  /** Versions read by find(), by NAME/VID: a version directory never changes once published. */
  private readonly older = new Map<string, PublishedVersion>();

  constructor(dir: string) {
    this.dir = dir;
  }

  readonly kind = "directory";

  get url(): string {
    return this.dir;
  }

  /** list() reads a missing or unreadable directory as empty: this says whether it is there. */
  async check(): Promise<void> {
    await access(this.dir, constants.R_OK | constants.X_OK).catch((error: NodeJS.ErrnoException) => {
      throw new EosError("IO", `image directory ${this.dir}: ${error.code ?? error.message}`);
    });
  }

  link(name: string, file: "raw" | "manifest" | "signature" | "sha"): string {
    const suffix = {
      raw: ".raw",
      manifest: ".manifest.json",
      signature: ".manifest.json.sig",
      sha: ".raw.sha",
    }[file];
    return join(this.dir, `${name}${suffix}`);
  }

  private versionsDir(name: string): string {
    return join(this.dir, ".versions", name);
  }

  private stateDir(): string {
    return join(this.dir, ".state");
  }

  private checkName(name: string): void {
    if (!isSafeImageName(name))
      throw new EosError("REFUSED", `not a valid image name: ${JSON.stringify(name)}`);
  }

  /** The currently published version, or undefined when nothing is published under that name. */
  async current(name: string): Promise<PublishedVersion | undefined> {
    this.checkName(name);
    let target: string;
    try {
      target = await readlink(this.link(name, "manifest"));
    } catch {
      return undefined;
    }
    const m = /^\.versions\/([^/]+)\/([^/]+)\/[^/]+$/.exec(target);
    if (!m || m[1] !== name)
      throw new EosError("IO", `${this.link(name, "manifest")} points outside the store`);
    const vid = m[2] as string;
    const cached = this.cache.get(name);
    if (cached?.vid === vid) return cached;
    const version = await this.load(name, vid);
    this.cache.set(name, version);
    return version;
  }

  /** One version directory, read and checked (the current one, or an older one kept for deltas). */
  async load(name: string, vid: string): Promise<PublishedVersion> {
    const dir = join(this.versionsDir(name), vid);
    const manifestBytes = await readFile(join(dir, `${name}.manifest.json`));
    const signatureBytes = await readFile(join(dir, `${name}.manifest.json.sig`)).catch(() => undefined);
    const deltaIndexBytes = await readFile(join(dir, `${name}.deltas.json`)).catch(() => undefined);
    const manifest = decodeManifest(manifestBytes, `${name}.manifest.json`);
    const rawPath = join(dir, `${name}.raw`);
    const source = await openBlockSource(rawPath);
    const ranges: Partial<Record<StreamKind, ByteRange>> = {};
    try {
      const { table } = await readGpt(source);
      const root = findPartition(table, manifest.partitions.root.label);
      if (root) ranges.root = partitionRange(table, root);
      const fw = manifest.partitions.firmware && findPartition(table, manifest.partitions.firmware.label);
      if (fw) ranges.firmware = partitionRange(table, fw);
    } finally {
      await source.close();
    }
    const open = (file: VersionFile) => {
      if (file === "raw") return fileReader(rawPath);
      if (file === "chunks") return fileReader(join(dir, `${name}.chunks`));
      if (typeof file === "object") return fileReader(join(dir, "deltas", deltaFileName(file.delta)));
      const range = ranges[file];
      return range ? fileReader(rawPath, range.offset, range.length) : Promise.resolve(undefined);
    };
    return { name, vid, manifestBytes, signatureBytes, deltaIndexBytes, manifest, ranges, open };
  }

  /**
   * A kept version by its version string (a rollout names versions, not
   * directories): the newest publish of it, or undefined when it is gone.
   */
  async find(name: string, version: string): Promise<PublishedVersion | undefined> {
    const current = await this.current(name);
    if (current?.manifest.version === version) return current;
    for (const vid of await this.history(name)) {
      const key = `${name}/${vid}`;
      const kept = this.older.get(key) ?? (await this.load(name, vid).catch(() => undefined));
      if (!kept) continue;
      this.older.set(key, kept);
      if (kept.manifest.version === version) return kept;
    }
    return undefined;
  }

  /** The version directories kept for `name`, newest publish first. */
  async history(name: string): Promise<string[]> {
    this.checkName(name);
    const entries = await readdir(this.versionsDir(name)).catch(() => [] as string[]);
    return entries
      .filter((e) => !e.startsWith(".staging-") && publishedAt(e) !== undefined)
      .sort((a, b) => (publishedAt(b) as number) - (publishedAt(a) as number));
  }

  async list(): Promise<string[]> {
    const entries = await readdir(this.dir).catch(() => [] as string[]);
    return entries
      .filter((e) => e.endsWith(".manifest.json"))
      .map((e) => e.slice(0, -".manifest.json".length))
      .filter(isSafeImageName)
      .sort();
  }

  async lock(name: string): Promise<Lock> {
    this.checkName(name);
    await mkdir(this.stateDir(), { recursive: true, mode: 0o755 });
    return acquireLock(join(this.stateDir(), `${name}.lock`), `a fetch of ${name}`);
  }

  async readState<T>(name: string): Promise<T | undefined> {
    try {
      return JSON.parse(await readFile(join(this.stateDir(), `${name}.json`), "utf8")) as T;
    } catch {
      return undefined;
    }
  }

  async writeState(name: string, state: unknown): Promise<void> {
    await mkdir(this.stateDir(), { recursive: true });
    await atomicWriteFile(join(this.stateDir(), `${name}.json`), `${JSON.stringify(state, null, 2)}\n`);
  }

  /** A fresh staging directory on the store's file system (call with the image's lock held). */
  async stage(name: string): Promise<Staging> {
    this.checkName(name);
    const versions = this.versionsDir(name);
    await mkdir(versions, { recursive: true });
    for (const entry of await readdir(versions)) {
      if (entry.startsWith(".staging-")) await rm(join(versions, entry), { recursive: true, force: true });
    }
    const dir = join(versions, `.staging-${randomBytes(6).toString("hex")}`);
    await mkdir(dir);
    return { dir, rawPath: join(dir, `${name}.raw`) };
  }

  async discard(staging: Staging): Promise<void> {
    await rm(staging.dir, { recursive: true, force: true });
  }

  /**
   * Makes a staged version current. The raw file must already be complete
   * and verified; the manifest, signature and sha files are written here.
   */
  async publish(name: string, staging: Staging, files: PublishFiles): Promise<string> {
    if (files.deltaIndexBytes)
      await atomicWriteFile(join(staging.dir, `${name}.deltas.json`), files.deltaIndexBytes);
    if (files.chunkIndexBytes)
      await atomicWriteFile(join(staging.dir, `${name}.chunks`), files.chunkIndexBytes);
    await atomicWriteFile(join(staging.dir, `${name}.manifest.json`), files.manifestBytes);
    if (files.signatureBytes)
      await atomicWriteFile(join(staging.dir, `${name}.manifest.json.sig`), files.signatureBytes);
    await atomicWriteFile(join(staging.dir, `${name}.raw.sha`), `${files.rawSha256}  ${name}.raw\n`);
    await fsyncPath(staging.rawPath);
    const safeVersion = files.version.replace(/[^A-Za-z0-9._+-]/g, "_");
    const vid = `${safeVersion}-${Date.now().toString(36)}-${randomBytes(3).toString("hex")}`;
    await rename(staging.dir, join(this.versionsDir(name), vid));
    await fsyncPath(this.versionsDir(name), true);
    const relative = (file: string) => join(".versions", name, vid, file);
    const switchLink = async (linkPath: string, target: string) => {
      const temp = `${linkPath}.tmp-${randomBytes(4).toString("hex")}`;
      await symlink(target, temp);
      await rename(temp, linkPath);
    };
    await switchLink(this.link(name, "raw"), relative(`${name}.raw`));
    await switchLink(this.link(name, "sha"), relative(`${name}.raw.sha`));
    if (files.signatureBytes)
      await switchLink(this.link(name, "signature"), relative(`${name}.manifest.json.sig`));
    else await unlink(this.link(name, "signature")).catch(() => undefined);
    // The manifest link is the one readers resolve: it switches last.
    await switchLink(this.link(name, "manifest"), relative(`${name}.manifest.json`));
    await fsyncPath(this.dir, true);
    return vid;
  }

  /** Deletes an older version directory (src/io/server/retention.ts decides which); never the current one. */
  async removeVersion(name: string, vid: string): Promise<void> {
    this.checkName(name);
    if (!(await this.history(name)).includes(vid)) return;
    if ((await this.current(name).catch(() => undefined))?.vid === vid)
      throw new EosError("IO", `${name}: ${vid} is the published version; it is not removed`);
    await rm(join(this.versionsDir(name), vid), { recursive: true, force: true });
    this.older.delete(`${name}/${vid}`);
  }
}
