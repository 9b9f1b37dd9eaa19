/**
 * Conditional downloads from an image's origin. An unchanged origin answers
 * 304 to one request carrying the validators it gave last time.
 */
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import { EosError } from "../core/errors.ts";
import { readBounded } from "./read-bounded.ts";

export interface Validators {
  etag?: string;
  lastModified?: string;
}

export type OriginResponse =
  | { status: "unchanged"; validators: Validators }
  | { status: "ok"; body: Readable; length: number | undefined; validators: Validators };

export interface OriginOptions {
  validators?: Validators;
  signal?: AbortSignal;
  timeoutMs?: number;
}

function describe(url: string): string {
  // Never log credentials embedded in an origin URL.
  try {
    const u = new URL(url);
    u.username = "";
    u.password = "";
    return u.toString();
  } catch {
    return url;
  }
}

/** Counts bytes; a body that ends early or breaks off becomes a TRUNCATED error naming the origin. */
function lengthChecked(body: Readable, expected: number | undefined, url: string): Readable {
  let seen = 0;
  async function* check(): AsyncGenerator<Buffer> {
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        seen += chunk.length;
        yield chunk;
      }
    } catch (error) {
      const of = expected === undefined ? "" : ` of ${expected}`;
      throw new EosError(
        "TRUNCATED",
        `${describe(url)}: connection broke off after ${seen}${of} bytes (${(error as Error).message})`,
      );
    }
    if (expected !== undefined && seen !== expected) {
      throw new EosError("TRUNCATED", `${describe(url)}: got ${seen} of ${expected} bytes`);
    }
  }
  return Readable.from(check(), { objectMode: false });
}

export async function openOrigin(url: string, options: OriginOptions = {}): Promise<OriginResponse> {
  if (url.startsWith("file://")) return openFile(url, options.validators);
  const headers: Record<string, string> = { "user-agent": "eos-os-update-server" };
  if (options.validators?.etag) headers["if-none-match"] = options.validators.etag;
  if (options.validators?.lastModified) headers["if-modified-since"] = options.validators.lastModified;
  // The timeout covers the response headers only; bodies are bounded by the caller's watchdog
  // (a long download is fine while it moves). A signal stops either at once.
  const controller = new AbortController();
  const stop = () => controller.abort(options.signal?.reason);
  if (options.signal?.aborted) stop();
  else options.signal?.addEventListener("abort", stop, { once: true });
  const timeoutMs = options.timeoutMs ?? 60_000;
  const headerTimer = setTimeout(
    () => controller.abort(new Error(`no answer within ${timeoutMs / 1000} s`)),
    timeoutMs,
  );
  let response: Response;
  try {
    response = await fetch(url, { headers, signal: controller.signal, redirect: "follow" });
  } catch (error) {
    options.signal?.removeEventListener("abort", stop);
    const cause = (error as { cause?: { code?: string; message?: string } }).cause;
    throw new EosError(
      "NETWORK",
      `${describe(url)}: ${cause?.code ?? cause?.message ?? (error as Error).message}`,
      {
        hint: "is the origin reachable from this server?",
      },
    );
  } finally {
    clearTimeout(headerTimer);
  }
  const validators: Validators = {};
  const etag = response.headers.get("etag");
  const lastModified = response.headers.get("last-modified");
  if (etag) validators.etag = etag;
  if (lastModified) validators.lastModified = lastModified;
  const release = () => options.signal?.removeEventListener("abort", stop);
  if (response.status === 304) {
    release();
    await response.body?.cancel();
    return { status: "unchanged", validators: options.validators ?? validators };
  }
  if (response.status !== 200 || !response.body) {
    release();
    await response.body?.cancel();
    throw new EosError("HTTP", `${describe(url)}: HTTP ${response.status} ${response.statusText}`, {
      exitCode: 3,
    });
  }
  const lengthHeader = response.headers.get("content-length");
  const length =
    lengthHeader !== null && response.headers.get("content-encoding") === null
      ? Number(lengthHeader)
      : undefined;
  const body = Readable.fromWeb(response.body as import("node:stream/web").ReadableStream<Uint8Array>);
  const checked = lengthChecked(body, length, url);
  checked.once("close", release);
  return { status: "ok", body: checked, length, validators };
}

async function openFile(url: string, previous: Validators | undefined): Promise<OriginResponse> {
  const path = fileURLToPath(url);
  const st = await stat(path).catch(() => undefined);
  if (!st?.isFile()) throw new EosError("HTTP", `${url}: no such file`);
  const validators: Validators = {
    lastModified: st.mtime.toUTCString(),
    etag: `"${st.ino}-${st.size}-${st.mtimeMs}"`,
  };
  if (previous?.etag === validators.etag) return { status: "unchanged", validators };
  return {
    status: "ok",
    body: createReadStream(path, { highWaterMark: 1 << 20 }),
    length: st.size,
    validators,
  };
}

/** A small document (manifest, signature) fully read, with a size cap. */
export async function fetchSmall(
  url: string,
  options: OriginOptions & { maxBytes?: number } = {},
): Promise<
  { status: "unchanged"; validators: Validators } | { status: "ok"; bytes: Buffer; validators: Validators }
> {
  const res = await openOrigin(url, options);
  if (res.status === "unchanged") return res;
  const bytes = await readBounded(res.body, options.maxBytes ?? 1 << 20, describe(url));
  return { status: "ok", bytes, validators: res.validators };
}
