/**
 * The S3 client of the image store, its errors as EosErrors that name the
 * bucket and what failed (the SDK's own are class names and stack traces),
 * and a reader of one object's byte ranges for send-range.ts. Imported only
 * by s3-images.ts, which store.ts loads only for `storage: s3://…`.
 */
import type { Readable } from "node:stream";
import {
  GetObjectCommand,
  HeadObjectCommand,
  S3Client,
  type GetObjectCommandOutput,
} from "@aws-sdk/client-s3";
import { EosError, errorMessage } from "../../core/errors.ts";
import type { StorageLocation } from "../../core/server/storage-url.ts";
import type { RangeReader } from "./store.ts";

export interface S3Settings {
  endpoint?: string | undefined;
  region?: string | undefined;
  force_path_style?: boolean | undefined;
  env: NodeJS.ProcessEnv;
}

export interface Bucket {
  client: S3Client;
  where: StorageLocation;
  /** What messages call the endpoint. */
  endpoint: string;
}

export function s3Bucket(where: StorageLocation, settings: S3Settings): Bucket {
  // The SDK warns on Node 20 (its next majors need 22) on stderr, where fetch's JSON log goes; it is pinned.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
  const env = settings.env;
  const region = settings.region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? "us-east-1";
  const keyId = env.AWS_ACCESS_KEY_ID;
  const secret = env.AWS_SECRET_ACCESS_KEY;
  const client = new S3Client({
    region,
    ...(settings.endpoint ? { endpoint: settings.endpoint } : {}),
    forcePathStyle: settings.force_path_style ?? settings.endpoint !== undefined,
    // The command's environment first (a test's, a unit's); else the SDK's chain (~/.aws, instance roles).
    ...(keyId && secret
      ? {
          credentials: {
            accessKeyId: keyId,
            secretAccessKey: secret,
            ...(env.AWS_SESSION_TOKEN ? { sessionToken: env.AWS_SESSION_TOKEN } : {}),
          },
        }
      : {}),
    // S3-compatible stores (MinIO, Ceph, s3rver) do not all take the SDK's newer default checksums.
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
    maxAttempts: 3,
    requestHandler: { connectionTimeout: 5000, requestTimeout: 60_000 },
  });
  return { client, where, endpoint: settings.endpoint ?? `s3.${region}.amazonaws.com` };
}

const CREDENTIAL_ERRORS = new Set([
  "InvalidAccessKeyId",
  "SignatureDoesNotMatch",
  "AccessDenied",
  "ExpiredToken",
  "InvalidToken",
  "CredentialsProviderError",
]);
const NETWORK_ERRORS = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "ETIMEDOUT",
  "ECONNRESET",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "TimeoutError",
  "RequestTimeout",
]);

/** The SDK's error as an EosError that says which store, which endpoint and what was being done. */
export function storageError(bucket: Bucket, what: string, error: unknown): EosError {
  if (error instanceof EosError) return error;
  const e = error as { name?: string; code?: string; $metadata?: { httpStatusCode?: number } };
  const name = e.name ?? "";
  const status = e.$metadata?.httpStatusCode;
  const url = bucket.where.url;
  if (name === "NoSuchBucket" || (name === "NotFound" && what === "checking the bucket"))
    return new EosError("STORAGE", `${url}: the bucket ${bucket.where.bucket} does not exist (${what})`, {
      hint: `create it, or correct storage: in the server configuration (endpoint ${bucket.endpoint})`,
    });
  if (CREDENTIAL_ERRORS.has(name) || status === 403)
    return new EosError("AUTH", `${url}: the storage refused the credentials (${name || status}) ${what}`, {
      hint: "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the AWS profile) of the server",
    });
  const code = e.code ?? name;
  if (NETWORK_ERRORS.has(code))
    return new EosError(
      "STORAGE",
      `${url}: cannot reach the storage at ${bucket.endpoint} (${code}) ${what}`,
      {
        hint: "is the endpoint right (s3: endpoint:) and the store up?",
      },
    );
  return new EosError("STORAGE", `${url}: ${what} failed: ${name ? `${name}: ` : ""}${errorMessage(error)}`);
}

export function isMissing(error: unknown): boolean {
  const name = (error as { name?: string }).name;
  return name === "NoSuchKey" || name === "NotFound";
}

export async function getObject(
  bucket: Bucket,
  key: string,
  range?: { start: number; end: number },
): Promise<GetObjectCommandOutput | undefined> {
  try {
    return await bucket.client.send(
      new GetObjectCommand({
        Bucket: bucket.where.bucket,
        Key: key,
        ...(range ? { Range: `bytes=${range.start}-${range.end - 1}` } : {}),
      }),
    );
  } catch (error) {
    if (isMissing(error)) return undefined;
    throw storageError(bucket, `reading ${key}`, error);
  }
}

/** A small object's bytes, or undefined when it is not there. */
export async function getBytes(bucket: Bucket, key: string): Promise<Buffer | undefined> {
  const got = await getObject(bucket, key);
  if (!got?.Body) return undefined;
  return Buffer.from(await got.Body.transformToByteArray());
}

export async function objectSize(bucket: Bucket, key: string): Promise<number | undefined> {
  try {
    const head = await bucket.client.send(new HeadObjectCommand({ Bucket: bucket.where.bucket, Key: key }));
    return head.ContentLength;
  } catch (error) {
    if (isMissing(error)) return undefined;
    throw storageError(bucket, `reading ${key}`, error);
  }
}

/**
 * An object read by ranged GETs. send-range.ts reads in order: one GET from
 * the first position to the end of the caller's window serves all of them,
 * and only a jump starts another.
 */
export function objectReader(
  bucket: Bucket,
  key: string,
  size: number,
  window: { offset: number; length: number } | undefined,
): RangeReader {
  let body: Readable | undefined;
  let chunks: AsyncIterator<Buffer> | undefined;
  let next = -1;
  let left: Buffer = Buffer.alloc(0);
  const stop = () => {
    body?.destroy();
    body = undefined;
    chunks = undefined;
  };
  const stream = async (start: number, end: number): Promise<Readable> => {
    const got = await getObject(bucket, key, { start, end });
    if (!got?.Body) throw new EosError("STORAGE", `${bucket.where.url}: ${key} is gone`);
    return got.Body as Readable;
  };
  return {
    size,
    async read(buffer, offset, length, position) {
      if (position >= size) return { bytesRead: 0 };
      let done = 0;
      let opened = false;
      while (done < length) {
        if (!chunks || position + done !== next) {
          if (opened) break;
          stop();
          const at = position + done;
          const inWindow = window && at >= window.offset && at < window.offset + window.length;
          body = await stream(at, inWindow ? window.offset + window.length : size);
          chunks = body[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
          next = at;
          left = Buffer.alloc(0);
          opened = true;
        }
        if (left.length === 0) {
          const step = await chunks.next();
          // The window's GET is done: a read past it opens the next one.
          if (step.done) {
            stop();
            continue;
          }
          left = step.value;
        }
        const n = left.copy(buffer, offset + done, 0, Math.min(left.length, length - done));
        left = left.subarray(n);
        done += n;
        next += n;
      }
      return { bytesRead: done };
    },
    stream,
    close: async () => stop(),
  };
}
