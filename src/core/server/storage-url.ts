/**
 * `storage: s3://BUCKET/PREFIX` from the server configuration: the bucket
 * and the key prefix every object of the store lives under.
 */
import { EosError } from "../errors.ts";

export interface StorageLocation {
  bucket: string;
  /** "" or a prefix ending in "/". */
  prefix: string;
  /** As configured, without a trailing slash: how messages name the store. */
  url: string;
}

/** S3's rules for bucket names (lower case, digits, dots, hyphens; 3 to 63). */
const BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

export function parseStorageUrl(text: string, where: string): StorageLocation {
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(text);
  if (!m) throw new EosError("CONFIG", `${where}: not an s3://BUCKET/PREFIX URL: ${JSON.stringify(text)}`);
  const bucket = m[1] as string;
  if (!BUCKET.test(bucket) || bucket.includes(".."))
    throw new EosError("CONFIG", `${where}: not a valid bucket name: ${JSON.stringify(bucket)}`);
  const parts = (m[2] ?? "").split("/").filter((p) => p !== "");
  // Keys are built from the prefix: no dot segments or control characters that a store may treat specially.
  for (const part of parts)
    if (part === "." || part === ".." || [...part].some((c) => c < " " || c === "\u007f" || c === "\\"))
      throw new EosError("CONFIG", `${where}: not a valid key prefix: ${JSON.stringify(m[2])}`);
  const prefix = parts.length ? `${parts.join("/")}/` : "";
  return { bucket, prefix, url: `s3://${bucket}${prefix ? `/${prefix.slice(0, -1)}` : ""}` };
}
