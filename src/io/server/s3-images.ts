/**
 * Published images in an S3 bucket (`storage: s3://BUCKET/PREFIX`). Each
 * version's objects live under immutable keys, PREFIX/NAME/VID/…: the disk
 * image, its partition streams as objects of their own (so a device's Range,
 * and a redirect to a presigned URL, address the stream itself), manifest,
 * signature, chunk index, deltas, and NAME.ranges.json, uploaded last of them:
 * a version without it is incomplete. PREFIX/NAME.current.json names the
 * current version and is written after all of them, so a reader (another
 * replica too) never follows it to a half-published version.
 *
 * The image is verified and deltas are made in a local staging directory
 * (the image directory), where fetch's lock lives too.
 */
import { randomBytes } from "node:crypto";
import { mkdir, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  ListObjectsV2Command,
} from "@aws-sdk/client-s3";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import { EosError } from "../../core/errors.ts";
import type { ByteRange } from "../../core/gpt.ts";
import { isSafeImageName } from "../../core/image-name.ts";
import { decodeManifest } from "../../core/manifest.ts";
import type { StorageLocation } from "../../core/server/storage-url.ts";
import { acquireLock, type Lock } from "../lock.ts";
import { deltaFileName } from "./deltas.ts";
import { publishedAt } from "./published.ts";
import { getBytes, objectReader, objectSize, s3Bucket, storageError, type Bucket } from "./s3-client.ts";
import type { S3Settings } from "./s3-client.ts";
import { partSizes, uploadObject, type PartSizes, type UploadBody } from "./s3-upload.ts";
import type {
  ImageStore,
  PublishedVersion,
  PublishFiles,
  Staging,
  StreamKind,
  VersionFile,
} from "./store.ts";

/** How long a read of the current pointer is reused: replicas see a new version within this. */
const POINTER_TTL_MS = 1000;
const UPLOADS_AT_ONCE = 4;

export class S3Images implements ImageStore {
  readonly url: string;
  readonly kind = "s3";
  private readonly bucket: Bucket;
  private readonly workDir: string;
  private readonly partSizes: PartSizes;
  private readonly pointers = new Map<string, { vid: string | undefined; read: number }>();
  /** Versions by NAME/VID: their objects never change once published. */
  private readonly versions = new Map<string, PublishedVersion>();

  constructor(where: StorageLocation, settings: S3Settings & { workDir: string }) {
    this.url = where.url;
    this.bucket = s3Bucket(where, settings);
    this.workDir = settings.workDir;
    this.partSizes = partSizes(settings.env);
  }

  private key(...parts: string[]): string {
    return `${this.bucket.where.prefix}${parts.join("/")}`;
  }

  private checkName(name: string): void {
    if (!isSafeImageName(name))
      throw new EosError("REFUSED", `not a valid image name: ${JSON.stringify(name)}`);
  }

  private async send<T>(what: string, run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (error) {
      throw storageError(this.bucket, what, error);
    }
  }

  /** Keys (and, with a delimiter, the "directories") under a prefix, all pages. */
  private async listKeys(prefix: string, delimiter?: string): Promise<{ keys: string[]; dirs: string[] }> {
    const keys: string[] = [];
    const dirs: string[] = [];
    let token: string | undefined;
    do {
      const page = await this.send(`listing ${prefix}`, () =>
        this.bucket.client.send(
          new ListObjectsV2Command({
            Bucket: this.bucket.where.bucket,
            Prefix: prefix,
            ...(delimiter ? { Delimiter: delimiter } : {}),
            ...(token ? { ContinuationToken: token } : {}),
          }),
        ),
      );
      for (const o of page.Contents ?? []) if (o.Key) keys.push(o.Key);
      for (const p of page.CommonPrefixes ?? []) if (p.Prefix) dirs.push(p.Prefix);
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return { keys, dirs };
  }

  private async put(
    key: string,
    body: UploadBody,
    signal?: AbortSignal,
    onFailure?: (error: unknown) => void,
  ): Promise<void> {
    await uploadObject(this.bucket, key, body, { sizes: this.partSizes, signal, onFailure });
  }

  private async remove(key: string): Promise<void> {
    await this.send(`deleting ${key}`, () =>
      this.bucket.client.send(new DeleteObjectCommand({ Bucket: this.bucket.where.bucket, Key: key })),
    );
  }

  async check(): Promise<void> {
    await this.send("checking the bucket", () =>
      this.bucket.client.send(new HeadBucketCommand({ Bucket: this.bucket.where.bucket })),
    );
  }

  private async pointer(name: string): Promise<string | undefined> {
    const cached = this.pointers.get(name);
    if (cached && Date.now() - cached.read < POINTER_TTL_MS) return cached.vid;
    const bytes = await getBytes(this.bucket, this.key(`${name}.current.json`));
    let vid: string | undefined;
    if (bytes) {
      vid = (JSON.parse(bytes.toString("utf8")) as { vid?: unknown }).vid as string | undefined;
      if (typeof vid !== "string" || publishedAt(vid) === undefined || vid.includes("/"))
        throw new EosError("STORAGE", `${this.url}: ${name}.current.json names no version`);
    }
    this.pointers.set(name, { vid, read: Date.now() });
    return vid;
  }

  async current(name: string): Promise<PublishedVersion | undefined> {
    this.checkName(name);
    const vid = await this.pointer(name);
    return vid === undefined ? undefined : this.load(name, vid);
  }

  async load(name: string, vid: string): Promise<PublishedVersion> {
    this.checkName(name);
    const known = this.versions.get(`${name}/${vid}`);
    if (known) return known;
    const at = (file: string) => this.key(name, vid, file);
    const [manifestBytes, signatureBytes, deltaIndexBytes, rangesBytes] = await Promise.all([
      getBytes(this.bucket, at(`${name}.manifest.json`)),
      getBytes(this.bucket, at(`${name}.manifest.json.sig`)),
      getBytes(this.bucket, at(`${name}.deltas.json`)),
      getBytes(this.bucket, at(`${name}.ranges.json`)),
    ]);
    if (!manifestBytes || !rangesBytes)
      throw new EosError("STORAGE", `${this.url}: version ${vid} of ${name} is incomplete`);
    const manifest = decodeManifest(manifestBytes, `${name}.manifest.json`);
    const ranges = JSON.parse(rangesBytes.toString("utf8")) as Partial<Record<StreamKind, ByteRange>>;
    const keyOf = (file: VersionFile): string | undefined => {
      if (file === "raw") return at(`${name}.raw`);
      if (file === "chunks") return at(`${name}.chunks`);
      if (typeof file === "object") return at(`deltas/${deltaFileName(file.delta)}`);
      return ranges[file] ? at(`${name}.${file}`) : undefined;
    };
    const version: PublishedVersion = {
      name,
      vid,
      manifestBytes,
      signatureBytes,
      deltaIndexBytes,
      manifest,
      ranges,
      open: async (file, window) => {
        const key = keyOf(file);
        if (!key) return undefined;
        const size =
          typeof file === "string" && file !== "raw" && file !== "chunks"
            ? (ranges[file] as ByteRange).length
            : await objectSize(this.bucket, key);
        return size === undefined ? undefined : objectReader(this.bucket, key, size, window);
      },
      presign: async (file, expiresSeconds) => {
        const key = keyOf(file);
        if (!key) throw new EosError("NOT_FOUND", `${name} ${vid} has no such file`);
        return getSignedUrl(
          this.bucket.client,
          new GetObjectCommand({ Bucket: this.bucket.where.bucket, Key: key }),
          { expiresIn: expiresSeconds },
        );
      },
    };
    this.versions.set(`${name}/${vid}`, version);
    return version;
  }

  async find(name: string, version: string): Promise<PublishedVersion | undefined> {
    const current = await this.current(name);
    if (current?.manifest.version === version) return current;
    for (const vid of await this.history(name)) {
      const kept = await this.load(name, vid).catch(() => undefined);
      if (kept?.manifest.version === version) return kept;
    }
    return undefined;
  }

  /** Complete versions (those with their ranges.json), newest publish first. */
  async history(name: string): Promise<string[]> {
    return (await this.versionIds(name)).complete;
  }

  private async versionIds(name: string): Promise<{ complete: string[]; all: string[] }> {
    this.checkName(name);
    const base = this.key(name, "");
    const { keys } = await this.listKeys(base);
    const all = new Set<string>();
    const complete = new Set<string>();
    for (const key of keys) {
      const [vid, file] = key.slice(base.length).split("/", 2) as [string, string | undefined];
      if (publishedAt(vid) === undefined) continue;
      all.add(vid);
      if (file === `${name}.ranges.json`) complete.add(vid);
    }
    const newest = (a: string, b: string) => (publishedAt(b) as number) - (publishedAt(a) as number);
    return { complete: [...complete].sort(newest), all: [...all].sort(newest) };
  }

  async list(): Promise<string[]> {
    const { keys } = await this.listKeys(this.key(""), "/");
    const base = this.key("");
    return keys
      .map((k) => k.slice(base.length))
      .filter((k) => k.endsWith(".current.json"))
      .map((k) => k.slice(0, -".current.json".length))
      .filter(isSafeImageName)
      .sort();
  }

  async lock(name: string): Promise<Lock> {
    this.checkName(name);
    await mkdir(join(this.workDir, ".state"), { recursive: true, mode: 0o755 });
    return acquireLock(join(this.workDir, ".state", `${name}.lock`), `a fetch of ${name}`);
  }

  async readState<T>(name: string): Promise<T | undefined> {
    const bytes = await getBytes(this.bucket, this.key(".state", `${name}.json`));
    return bytes ? (JSON.parse(bytes.toString("utf8")) as T) : undefined;
  }

  async writeState(name: string, state: unknown): Promise<void> {
    await this.put(this.key(".state", `${name}.json`), Buffer.from(`${JSON.stringify(state, null, 2)}\n`));
  }

  async stage(name: string): Promise<Staging> {
    this.checkName(name);
    const staging = join(this.workDir, ".staging");
    await mkdir(staging, { recursive: true });
    for (const entry of await readdir(staging))
      if (entry.startsWith(`${name}.`)) await rm(join(staging, entry), { recursive: true, force: true });
    // A publish that died part way left a version without its ranges.json: nothing reads it, it goes.
    const { complete, all } = await this.versionIds(name);
    for (const vid of all.filter((v) => !complete.includes(v))) await this.deleteVersion(name, vid);
    const dir = join(staging, `${name}.${randomBytes(6).toString("hex")}`);
    await mkdir(dir);
    return { dir, rawPath: join(dir, `${name}.raw`) };
  }

  async discard(staging: Staging): Promise<void> {
    await rm(staging.dir, { recursive: true, force: true });
  }

  async publish(name: string, staging: Staging, files: PublishFiles, signal?: AbortSignal): Promise<string> {
    this.checkName(name);
    const safeVersion = files.version.replace(/[^A-Za-z0-9._+-]/g, "_");
    const vid = `${safeVersion}-${Date.now().toString(36)}-${randomBytes(3).toString("hex")}`;
    const at = (file: string) => this.key(name, vid, file);
    const uploads: Array<[string, UploadBody]> = [
      [at(`${name}.raw`), { path: staging.rawPath }],
      [at(`${name}.manifest.json`), files.manifestBytes],
      [at(`${name}.raw.sha`), Buffer.from(`${files.rawSha256}  ${name}.raw\n`)],
    ];
    for (const kind of ["root", "firmware"] as const) {
      const range = files.ranges[kind];
      if (range) uploads.push([at(`${name}.${kind}`), { path: staging.rawPath, range }]);
    }
    const { signatureBytes, deltaIndexBytes, chunkIndexBytes } = files;
    if (signatureBytes) uploads.push([at(`${name}.manifest.json.sig`), signatureBytes]);
    if (deltaIndexBytes) uploads.push([at(`${name}.deltas.json`), deltaIndexBytes]);
    if (chunkIndexBytes) uploads.push([at(`${name}.chunks`), chunkIndexBytes]);
    const deltas = await readdir(join(staging.dir, "deltas")).catch(() => [] as string[]);
    for (const file of deltas.filter((f) => f.endsWith(".xd3")))
      uploads.push([at(`deltas/${file}`), { path: join(staging.dir, "deltas", file) }]);
    // The first failure stops the other uploads too (their multipart uploads are aborted), and
    // publish returns only once none is left running: nothing is uploaded after it has failed.
    const failed = new AbortController();
    const stop = signal ? AbortSignal.any([signal, failed.signal]) : failed.signal;
    let failure: { error: unknown } | undefined;
    // The first failure is what publish reports, not the others' being stopped by it.
    const fail = (error: unknown) => {
      failure ??= { error };
      failed.abort();
    };
    let next = 0;
    const worker = async () => {
      while (next < uploads.length && !stop.aborted) {
        const [key, body] = uploads[next++] as [string, UploadBody];
        await this.put(key, body, stop, fail).catch(fail);
      }
    };
    await Promise.all(Array.from({ length: UPLOADS_AT_ONCE }, worker));
    if (failure) throw failure.error;
    if (signal?.aborted)
      throw new EosError("INTERRUPTED", `${this.url}: the publish of ${name} ${files.version} was stopped`);
    // The version is complete with its ranges.json; the pointer that readers follow switches last.
    await this.put(at(`${name}.ranges.json`), Buffer.from(JSON.stringify(files.ranges)));
    await this.put(
      this.key(`${name}.current.json`),
      Buffer.from(`${JSON.stringify({ vid, version: files.version })}\n`),
    );
    this.pointers.delete(name);
    await this.discard(staging);
    return vid;
  }

  async removeVersion(name: string, vid: string): Promise<void> {
    if (!(await this.history(name)).includes(vid)) return;
    this.pointers.delete(name);
    if ((await this.current(name).catch(() => undefined))?.vid === vid)
      throw new EosError("IO", `${name}: ${vid} is the published version; it is not removed`);
    await this.deleteVersion(name, vid);
  }

  private async deleteVersion(name: string, vid: string): Promise<void> {
    const marker = this.key(name, vid, `${name}.ranges.json`);
    const { keys } = await this.listKeys(this.key(name, vid, ""));
    // The marker first: a removal cut short leaves an incomplete version, which the next stage() clears.
    if (keys.includes(marker)) await this.remove(marker);
    for (const key of keys.filter((k) => k !== marker)) await this.remove(key);
    this.versions.delete(`${name}/${vid}`);
  }
}
