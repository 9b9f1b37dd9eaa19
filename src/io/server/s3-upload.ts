/**
 * One object's upload to the bucket. Up to a threshold it is one PUT; above
 * it a multipart upload, because S3 takes at most 5 GiB in one PUT and a
 * large root over a slow link should not start again from byte 0 when one
 * request fails: a failed part is sent again (a bounded number of times),
 * read from the file again, with one part's buffer per upload in memory.
 * An upload that fails, or that a signal stops, is aborted so that no
 * uploaded parts are left stored (and billed) in the bucket.
 */
import { createReadStream } from "node:fs";
import { open, stat } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  PutObjectCommand,
  UploadPartCommand,
  type CompletedPart,
} from "@aws-sdk/client-s3";
import { EosError, errorMessage } from "../../core/errors.ts";
import type { ByteRange } from "../../core/gpt.ts";
import { storageError, type Bucket } from "./s3-client.ts";

const MiB = 1 << 20;
/** S3 allows at most this many parts: a larger object gets larger parts. */
const MAX_PARTS = 10_000;
/** Tries of one part, each with the SDK's own retries of throttling and transient errors inside. */
const PART_ATTEMPTS = 3;
const RETRY_PAUSE_MS = 250;

export interface PartSizes {
  /** Objects larger than this go up in parts. */
  threshold: number;
  partSize: number;
}

/**
 * 16 MiB parts (S3's minimum is 5 MiB, its maximum 10,000 parts) for objects
 * above 64 MiB: a root image's upload keeps one 16 MiB buffer and a failed
 * request costs at most 16 MiB sent again.
 */
export const DEFAULT_PART_SIZES: PartSizes = { threshold: 64 * MiB, partSize: 16 * MiB };

/**
 * The part sizes, with EOS_S3_PART_BYTES for tests: parts of that many bytes
 * above four times it (s3rver takes parts below S3's 5 MiB minimum; S3 does
 * not, so this is not a setting of the server's configuration).
 */
export function partSizes(env: NodeJS.ProcessEnv): PartSizes {
  const value = env.EOS_S3_PART_BYTES;
  if (value === undefined || value === "") return DEFAULT_PART_SIZES;
  const partSize = Number(value);
  if (!Number.isSafeInteger(partSize) || partSize < 64 * 1024)
    throw new EosError("USAGE", `EOS_S3_PART_BYTES: ${JSON.stringify(value)} is not a part size`, {
      hint: "a number of bytes, at least 65536; unset it for the default (16 MiB parts above 64 MiB)",
    });
  return { threshold: 4 * partSize, partSize };
}

/** The part size for an object of `length` bytes: larger than configured when it would take more than 10,000 parts. */
export function partSizeFor(length: number, sizes: PartSizes): number {
  return Math.max(sizes.partSize, Math.ceil(length / MAX_PARTS / MiB) * MiB);
}

export type UploadBody = Buffer | { path: string; range?: ByteRange | undefined };

export interface UploadOptions {
  sizes: PartSizes;
  /** Stops the upload: a multipart upload is then aborted. */
  signal?: AbortSignal | undefined;
  /** Told of a failure before the upload's parts are aborted, so other uploads can stop at once. */
  onFailure?: ((error: unknown) => void) | undefined;
}

function interrupted(bucket: Bucket, key: string): EosError {
  return new EosError("INTERRUPTED", `${bucket.where.url}: the upload of ${key} was stopped`);
}

export async function uploadObject(
  bucket: Bucket,
  key: string,
  body: UploadBody,
  o: UploadOptions,
): Promise<void> {
  if (o.signal?.aborted) throw interrupted(bucket, key);
  const span = Buffer.isBuffer(body)
    ? undefined
    : (body.range ?? { offset: 0, length: (await stat(body.path)).size });
  if (!Buffer.isBuffer(body) && span && span.length > o.sizes.threshold)
    return uploadInParts(bucket, key, body.path, span, o);
  const payload = Buffer.isBuffer(body)
    ? { Body: body, ContentLength: body.length }
    : {
        Body: createReadStream(body.path, {
          start: (span as ByteRange).offset,
          end: (span as ByteRange).offset + (span as ByteRange).length - 1,
          highWaterMark: MiB,
        }),
        ContentLength: (span as ByteRange).length,
      };
  try {
    await bucket.client.send(new PutObjectCommand({ Bucket: bucket.where.bucket, Key: key, ...payload }), {
      ...(o.signal ? { abortSignal: o.signal } : {}),
    });
  } catch (error) {
    if (o.signal?.aborted) throw interrupted(bucket, key);
    throw storageError(bucket, `uploading ${key}`, error);
  }
}

/** A throttled, timed-out or server-side failure: worth sending the part again. Refusals (4xx) are not. */
function transient(error: unknown): boolean {
  const status = (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
  return status === undefined || status >= 500 || status === 429;
}

async function uploadInParts(
  bucket: Bucket,
  key: string,
  path: string,
  span: ByteRange,
  o: UploadOptions,
): Promise<void> {
  const where = { Bucket: bucket.where.bucket, Key: key };
  const send = { ...(o.signal ? { abortSignal: o.signal } : {}) };
  const created = await bucket.client
    .send(new CreateMultipartUploadCommand(where), send)
    .catch((error: unknown) => {
      throw o.signal?.aborted ? interrupted(bucket, key) : storageError(bucket, `uploading ${key}`, error);
    });
  const uploadId = created.UploadId;
  if (!uploadId)
    throw new EosError("STORAGE", `${bucket.where.url}: uploading ${key}: the storage gave no upload id`);
  const partSize = partSizeFor(span.length, o.sizes);
  const count = Math.ceil(span.length / partSize);
  const file = await open(path, "r");
  try {
    const buffer = Buffer.allocUnsafe(Math.min(partSize, span.length));
    const parts: CompletedPart[] = [];
    for (let n = 1; n <= count; n++) {
      const start = (n - 1) * partSize;
      const length = Math.min(partSize, span.length - start);
      for (let attempt = 1; ; attempt++) {
        if (o.signal?.aborted) throw interrupted(bucket, key);
        const part = buffer.subarray(0, length);
        let got = 0;
        while (got < length) {
          const { bytesRead } = await file.read(part, got, length - got, span.offset + start + got);
          if (bytesRead === 0)
            throw new EosError("IO", `${path}: ended before byte ${span.offset + start + got}`);
          got += bytesRead;
        }
        try {
          const sent = await bucket.client.send(
            new UploadPartCommand({ ...where, UploadId: uploadId, PartNumber: n, Body: part }),
            send,
          );
          parts.push({ PartNumber: n, ETag: sent.ETag });
          break;
        } catch (error) {
          if (o.signal?.aborted) throw interrupted(bucket, key);
          if (attempt >= PART_ATTEMPTS || !transient(error))
            throw storageError(bucket, `uploading part ${n} of ${count} of ${key}`, error);
          await sleep(RETRY_PAUSE_MS * attempt);
        }
      }
    }
    await bucket.client
      .send(
        new CompleteMultipartUploadCommand({
          ...where,
          UploadId: uploadId,
          MultipartUpload: { Parts: parts },
        }),
        send,
      )
      .catch((error: unknown) => {
        throw o.signal?.aborted
          ? interrupted(bucket, key)
          : storageError(bucket, `completing the upload of ${key}`, error);
      });
  } catch (error) {
    o.onFailure?.(error);
    await abortUpload(bucket, key, uploadId, error);
    throw error;
  } finally {
    await file.close();
  }
}

/** Removes the parts stored so far; when that fails too, the error says what is left and how it goes. */
async function abortUpload(bucket: Bucket, key: string, uploadId: string, cause: unknown): Promise<void> {
  try {
    // Not under the signal: the abort is what a stopped upload still has to send.
    await bucket.client.send(
      new AbortMultipartUploadCommand({ Bucket: bucket.where.bucket, Key: key, UploadId: uploadId }),
    );
  } catch (error) {
    const first = cause instanceof EosError ? cause.message : errorMessage(cause);
    throw new EosError(
      "STORAGE",
      `${first}; and aborting that upload failed too: ${storageError(bucket, "aborting", error).message}`,
      {
        hint: `its parts stay stored until aborted (upload id ${uploadId}); a bucket lifecycle rule with AbortIncompleteMultipartUpload removes such uploads`,
      },
    );
  }
}
