/**
 * The update server's HTTP(S) API:
 *   GET /health                               liveness, no auth
 *   GET /v1/images                            published images and versions
 *   GET /v1/images/NAME/manifest.json         canonical manifest bytes
 *   GET /v1/images/NAME/manifest.json.sig     detached signatures
 *   GET|HEAD /v1/images/NAME/root|firmware    partition stream, Range + If-Range
 * Streams are read from the published version's file with backpressure; the
 * ETag is the partition's sha256 from the signed manifest, so a resumed
 * download (If-Range) never splices two versions.
 */
import { open, type FileHandle } from "node:fs/promises";
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { parseRange } from "../../core/http-range.ts";
import { isSafeImageName } from "../../core/image-name.ts";
import type { PublishedImages, StreamKind } from "./published.ts";
import type { Logger } from "../log.ts";
import type { TokenStore } from "./tokens.ts";

export interface UpdateServerOptions {
  store: PublishedImages;
  /** undefined: no authentication (only when the operator said so). */
  tokens: TokenStore | undefined;
  logger: Logger;
  tls?: { cert: Buffer; key: Buffer };
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): number {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
  return Buffer.byteLength(text);
}

const CHUNK = 256 * 1024;

/**
 * Streams a byte range with two fixed buffers per response: read into one
 * while the other is being written, and reuse a buffer only once its write
 * has completed. Memory per client is bounded (2 × CHUNK) and no garbage is
 * made per chunk, so RSS stays flat as clients are added.
 */
async function sendRange(
  handle: FileHandle,
  offset: number,
  length: number,
  res: ServerResponse,
): Promise<void> {
  const buffers = [Buffer.allocUnsafe(Math.min(CHUNK, length)), Buffer.allocUnsafe(Math.min(CHUNK, length))];
  const closed = new Promise<never>((_resolve, reject) => {
    res.once("close", () => {
      if (!res.writableFinished) reject(new Error("client closed the connection"));
    });
  });
  closed.catch(() => undefined);
  let position = offset;
  let left = length;
  let turn = 0;
  let pending: Promise<void> | undefined;
  while (left > 0) {
    const buffer = buffers[turn] as Buffer;
    turn ^= 1;
    const { bytesRead } = await handle.read(buffer, 0, Math.min(buffer.length, left), position);
    if (bytesRead === 0) throw new Error(`short read at ${position}`);
    if (pending) await Promise.race([pending, closed]);
    const chunk = buffer.subarray(0, bytesRead);
    pending = new Promise<void>((resolve, reject) =>
      res.write(chunk, (error) => (error ? reject(error) : resolve())),
    );
    // When the client goes away, `closed` wins the race and this write's failure has no other listener.
    pending.catch(() => undefined);
    position += bytesRead;
    left -= bytesRead;
  }
  if (pending) await Promise.race([pending, closed]);
  await new Promise<void>((resolve) => res.end(resolve));
}

export function createUpdateServer(options: UpdateServerOptions): Server {
  const { store, tokens, logger } = options;

  async function authenticate(req: IncomingMessage): Promise<string | undefined> {
    if (!tokens) return undefined;
    const header = req.headers.authorization ?? "";
    const m = /^Bearer ([A-Za-z0-9._~+/=-]{16,256})$/.exec(header);
    const device = m ? await tokens.authenticate(m[1] as string) : undefined;
    if (!device)
      throw new HttpError(401, "a valid bearer token is required", {
        "www-authenticate": 'Bearer realm="eos"',
      });
    return device;
  }

  async function stream(
    req: IncomingMessage,
    res: ServerResponse,
    name: string,
    kind: StreamKind,
  ): Promise<number> {
    const version = await store.current(name);
    const range = version?.ranges[kind];
    const part = kind === "root" ? version?.manifest.partitions.root : version?.manifest.partitions.firmware;
    if (!version || !range || !part) throw new HttpError(404, `no ${kind} stream for image ${name}`);
    // Open before answering: the open file keeps this version readable even if a publish replaces it now.
    const handle = await open(version.rawPath, "r");
    try {
      const etag = `"${part.sha256}"`;
      const headers: Record<string, string> = {
        "content-type": "application/octet-stream",
        "accept-ranges": "bytes",
        etag,
        "x-eos-version": version.manifest.version,
      };
      let start = 0;
      let end = range.length - 1;
      let status = 200;
      const ifRange = req.headers["if-range"];
      const wanted =
        ifRange === undefined || ifRange === etag
          ? parseRange(req.headers.range, range.length)
          : { kind: "none" as const };
      if (wanted.kind === "unsatisfiable") {
        throw new HttpError(416, "range not satisfiable", { "content-range": `bytes */${range.length}` });
      }
      if (wanted.kind === "range") {
        start = wanted.start;
        end = wanted.end;
        status = 206;
        headers["content-range"] = `bytes ${start}-${end}/${range.length}`;
      }
      headers["content-length"] = String(end - start + 1);
      res.writeHead(status, headers);
      if (req.method === "HEAD") {
        res.end();
        return 0;
      }
      await sendRange(handle, range.offset + start, end - start + 1, res);
      return end - start + 1;
    } finally {
      await handle.close();
    }
  }

  async function route(req: IncomingMessage, res: ServerResponse, log: { device?: string }): Promise<number> {
    const url = new URL(req.url ?? "/", "http://localhost");
    const path = url.pathname;
    if (req.method !== "GET" && req.method !== "HEAD")
      throw new HttpError(405, "only GET and HEAD", { allow: "GET, HEAD" });
    if (path === "/health") return sendJson(res, 200, { status: "ok", images: (await store.list()).length });
    const device = await authenticate(req);
    if (device) log.device = device;
    if (path === "/v1/images") {
      const images = [];
      for (const name of await store.list()) {
        const v = await store.current(name).catch(() => undefined);
        if (v) images.push({ name, version: v.manifest.version, signed: v.signatureBytes !== undefined });
      }
      return sendJson(res, 200, { images });
    }
    const m = /^\/v1\/images\/([^/]+)\/(manifest\.json|manifest\.json\.sig|root|firmware)$/.exec(path);
    if (!m) throw new HttpError(404, "no such resource");
    let name: string;
    try {
      name = decodeURIComponent(m[1] as string);
    } catch {
      throw new HttpError(400, "invalid image name: bad percent-encoding");
    }
    if (!isSafeImageName(name)) throw new HttpError(400, "invalid image name");
    const what = m[2] as string;
    if (what === "root" || what === "firmware") return stream(req, res, name, what);
    const version = await store.current(name);
    if (!version) throw new HttpError(404, `image ${name} is not published`);
    const bytes = what === "manifest.json" ? version.manifestBytes : version.signatureBytes;
    if (!bytes) throw new HttpError(404, `image ${name} is unsigned`);
    res.writeHead(200, {
      "content-type": "application/json",
      "content-length": bytes.length,
      etag: `"${version.vid}"`,
      "cache-control": "no-cache",
    });
    res.end(req.method === "HEAD" ? undefined : bytes);
    return bytes.length;
  }

  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const started = performance.now();
    const fields: { device?: string } = {};
    route(req, res, fields)
      .then((bytes) => ({ status: res.statusCode, bytes, error: undefined as string | undefined }))
      .catch((error: unknown) => {
        if (error instanceof HttpError) {
          if (!res.headersSent) sendJson(res, error.status, { error: error.message }, error.headers);
          return { status: error.status, bytes: 0, error: error.message };
        }
        const message = (error as Error).message;
        if (!res.headersSent) sendJson(res, 500, { error: "internal error" });
        else res.destroy();
        return { status: 500, bytes: 0, error: message };
      })
      .then(({ status, bytes, error }) => {
        const level = status >= 500 ? "error" : status >= 400 ? "warn" : "info";
        logger.log(level, "request", {
          method: req.method,
          path: req.url,
          status: res.headersSent ? res.statusCode : status,
          bytes,
          ms: Math.round(performance.now() - started),
          device: fields.device,
          remote: req.socket.remoteAddress,
          error,
        });
      });
  };
  return options.tls
    ? createHttpsServer({ cert: options.tls.cert, key: options.tls.key }, handler)
    : createHttpServer(handler);
}
