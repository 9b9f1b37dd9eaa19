/**
 * Where the update server keeps published images: the contract between
 * fetch (publishes), serve and the SSH forced command (read), retention
 * (removes), and the two stores behind it: a directory (published.ts, the
 * default and the original's layout) or an S3 bucket (s3-images.ts). The S3
 * one, and the AWS SDK with it, is loaded only when the configuration names
 * a bucket, so a server on a directory (and every device) never loads it.
 */
import type { Readable } from "node:stream";
import type { ByteRange } from "../../core/gpt.ts";
import type { Manifest } from "../../core/manifest.ts";
import { parseStorageUrl } from "../../core/server/storage-url.ts";
import type { Context } from "../context.ts";
import type { Lock } from "../lock.ts";
import { PublishedImages } from "./published.ts";
import { publishedDir, type ServerSetup } from "./server-config.ts";

export type StreamKind = "root" | "firmware";

/** A file of a published version: the disk image, a partition stream, the chunk index, one delta. */
export type VersionFile = "raw" | StreamKind | "chunks" | { delta: string };

/**
 * Reads one file of a version. A FileHandle has the same `read`, so
 * send-range.ts streams either; positions of a partition stream start at the
 * partition.
 */
export interface RangeReader {
  readonly size: number;
  read(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
  /** Bytes [start, end) as a stream. */
  stream(start: number, end: number): Promise<Readable>;
  close(): Promise<void>;
}

export interface PublishedVersion {
  name: string;
  vid: string;
  manifestBytes: Buffer;
  signatureBytes: Buffer | undefined;
  manifest: Manifest;
  /** Where each partition lies in the disk image. */
  ranges: Partial<Record<StreamKind, ByteRange>>;
  /** The deltas to this version from older ones (NAME.deltas.json), when the server made any. */
  deltaIndexBytes: Buffer | undefined;
  /**
   * Opens a file of this version; undefined when the version has none (no
   * delta from there, no chunk index). `window`: the part the caller will
   * read, so an object store asks for that range only.
   */
  open(file: VersionFile, window?: ByteRange): Promise<RangeReader | undefined>;
  /** A short-lived URL a device may fetch the file from itself (object storage only). */
  presign?(file: VersionFile, expiresSeconds: number): Promise<string>;
}

export interface Staging {
  /** A local directory: the image is verified and deltas are made on local files. */
  dir: string;
  rawPath: string;
}

export interface PublishFiles {
  manifestBytes: Buffer;
  signatureBytes: Buffer | undefined;
  rawSha256: string;
  version: string;
  deltaIndexBytes?: Buffer | undefined;
  chunkIndexBytes?: Buffer | undefined;
  /** Where the partitions lie in the staged image. */
  ranges: Partial<Record<StreamKind, ByteRange>>;
}

export interface ImageStore {
  /** The directory or s3:// URL, for logs and error messages. */
  readonly url: string;
  /** What /health says the store is (not where: it answers without a token). */
  readonly kind: "directory" | "s3";
  /** The currently published version, or undefined when nothing is published under that name. */
  current(name: string): Promise<PublishedVersion | undefined>;
  /** One version, read and checked (the current one, or an older one kept for deltas). */
  load(name: string, vid: string): Promise<PublishedVersion>;
  /** A kept version by its version string: the newest publish of it, or undefined when it is gone. */
  find(name: string, version: string): Promise<PublishedVersion | undefined>;
  /** The versions kept for `name`, newest publish first. */
  history(name: string): Promise<string[]>;
  /** The names of published images. */
  list(): Promise<string[]>;
  /** Throws an EosError naming the store when it cannot be read (for /health and start-up). */
  check(): Promise<void>;
  lock(name: string): Promise<Lock>;
  readState<T>(name: string): Promise<T | undefined>;
  writeState(name: string, state: unknown): Promise<void>;
  /** A fresh local staging directory (call with the image's lock held). */
  stage(name: string): Promise<Staging>;
  discard(staging: Staging): Promise<void>;
  /**
   * Makes a staged, verified version current; the pointer readers follow switches last. Returns its id.
   * The signal stops it before that switch (an S3 store then aborts its multipart uploads).
   */
  publish(name: string, staging: Staging, files: PublishFiles, signal?: AbortSignal): Promise<string>;
  /** Deletes an older version (retention decides which); never the current one. */
  removeVersion(name: string, vid: string): Promise<void>;
}

/** The configured store: `storage: s3://…` (loads the S3 client), else the image directory. */
export async function openImageStore(
  ctx: Context,
  setup: ServerSetup,
  imagesDir: string | undefined,
): Promise<ImageStore> {
  const dir = publishedDir(ctx, setup, imagesDir);
  const storage = setup.config.storage;
  if (storage === undefined) return new PublishedImages(dir);
  const where = parseStorageUrl(storage, `${setup.path}: storage`);
  const { S3Images } = await import("./s3-images.ts");
  return new S3Images(where, { ...setup.config.s3, env: ctx.env, workDir: dir });
}
