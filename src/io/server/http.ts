/**
 * The update server's HTTP(S) API:
 *   GET /health                               liveness, no auth
 *   GET /v1/images                            published images, each at the version assigned to the device
 *   GET /v1/images/NAME/manifest.json         canonical manifest bytes
 *   GET /v1/images/NAME/manifest.json.sig     detached signatures
 *   GET|HEAD /v1/images/NAME/root|firmware    partition stream, Range + If-Range
 *   GET /v1/images/NAME/deltas[/FROM_SHA256]  delta index, one delta
 *   GET /v1/images/NAME/chunks                the root's chunk index (signed by hash in the manifest)
 * Streams are read from the published version's file with backpressure; the
 * ETag is the partition's sha256 from the signed manifest, so a resumed
 * download (If-Range) never splices two versions. With `redirect`, a device
 * is sent to a presigned URL of the version's own object instead (after the
 * If-Range check here: the object's key is immutable, so the Range it then
 * sends there addresses the same version).
 */
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { parseRange } from "../../core/http-range.ts";
import { isSafeImageName } from "../../core/image-name.ts";
import type { ImageStore, PublishedVersion, StreamKind, VersionFile } from "./store.ts";
import type { Logger } from "../log.ts";
import { BufferPool } from "./buffer-pool.ts";
import {
  ClientGone,
  DEFAULT_STREAM_LIMITS,
  sendRange,
  type IdleHook,
  type StreamLimits,
} from "./send-range.ts";
import type { TokenStore } from "./tokens.ts";
import { HttpError, sendJson } from "./http-answer.ts";
import { streamAdmission } from "./admission.ts";
import type { ControlPlane } from "./fleet/api.ts";
import type { VersionResolver } from "./fleet/assigned.ts";
import { WINDOW_HEADER } from "../../core/fleet/window.ts";

export interface UpdateServerOptions {
  store: ImageStore;
  /** Answer stream and delta requests with a 302 to a presigned URL of the store (object storage only). */
  redirect?: { expiresSeconds: number };
  /** undefined: no authentication (only when the operator said so). */
  tokens: TokenStore | undefined;
  logger: Logger;
  tls?: { cert: Buffer; key: Buffer };
  limits?: Partial<StreamLimits>;
  onIdle?: IdleHook;
  /** The fleet control plane (device reports, admin API), when the server has a database. */
  control?: ControlPlane;
  /** Which version each device is served (rollouts, pins); without it, the newest for all. */
  resolve?: VersionResolver;
  /** Routes answered before all others (the dashboard, /health and /metrics with a control plane). */
  pages?: ReadonlyArray<{
    handles(path: string): boolean;
    handle(req: IncomingMessage, res: ServerResponse, url: URL, log: { admin?: string }): Promise<number>;
  }>;
  /** Counts every answered request (for /metrics). */
  counters?: { observe(path: string, status: number, bytes: number): void };
  /** The maintenance window of a device (its group's), sent with its manifest; none: any time. */
  windowOf?: (device: string | undefined) => Promise<string | undefined>;
}

export function createUpdateServer(options: UpdateServerOptions): Server {
  const { store, tokens, logger } = options;
  const versionFor = (name: string, device: string | undefined) =>
    options.resolve ? options.resolve.version(name, device) : store.current(name);
  const limits: StreamLimits = { ...DEFAULT_STREAM_LIMITS, ...options.limits };
  const pool = new BufferPool(limits.poolBytes, limits.bigBufferBytes);
  const admit = streamAdmission(limits, () => {
    // Nothing left to reuse them: kept buffers would stay pinned through a quiet spell.
    pool.drain();
    options.onIdle?.();
  });

  async function authenticate(req: IncomingMessage): Promise<string | undefined> {
    if (!tokens) return undefined;
    const header = req.headers.authorization ?? "";
    const m = /^Bearer ([A-Za-z0-9._~+/=-]{16,256})$/.exec(header);
    const token = m?.[1];
    // A device token from enrolment lives in the control plane's database; anything else in the tokens directory.
    const device =
      token === undefined
        ? undefined
        : ((await options.control?.deviceOf(token)) ?? (await tokens.authenticate(token)));
    if (!device)
      throw new HttpError(401, "a valid bearer token is required", {
        "www-authenticate": 'Bearer realm="eos"',
      });
    return device;
  }

  /** What the tokens directory says the bearer token is: an enrolment key, or a device's own token. */
  async function enroller(req: IncomingMessage) {
    const m = /^Bearer ([A-Za-z0-9._~+/=-]{16,256})$/.exec(req.headers.authorization ?? "");
    return m && tokens ? tokens.identify(m[1] as string) : undefined;
  }

  async function stream(
    req: IncomingMessage,
    res: ServerResponse,
    name: string,
    kind: StreamKind,
    client: string,
    device: string | undefined,
  ): Promise<number> {
    const release = admit(client);
    try {
      return await streamAdmitted(req, res, name, kind, device);
    } finally {
      release();
    }
  }

  async function streamAdmitted(
    req: IncomingMessage,
    res: ServerResponse,
    name: string,
    kind: StreamKind,
    device: string | undefined,
  ): Promise<number> {
    const version = await versionFor(name, device);
    const range = version?.ranges[kind];
    const part = kind === "root" ? version?.manifest.partitions.root : version?.manifest.partitions.firmware;
    if (!version || !range || !part) throw new HttpError(404, `no ${kind} stream for image ${name}`);
    const etag = `"${part.sha256}"`;
    const ifRange = req.headers["if-range"];
    const wanted =
      ifRange === undefined || ifRange === etag
        ? parseRange(req.headers.range, range.length)
        : { kind: "none" as const };
    // A Range whose If-Range no longer matches is answered here, in full: the URL would pass the Range on.
    if (wanted.kind !== "none" || req.headers.range === undefined) {
      const sent = await redirected(res, version, kind, etag);
      if (sent !== undefined) return sent;
    }
    // Open before answering: an open file keeps this version readable even if a publish replaces it now.
    const handle = await version.open(
      kind,
      wanted.kind === "range" ? { offset: wanted.start, length: wanted.end - wanted.start + 1 } : undefined,
    );
    if (!handle) throw new HttpError(404, `no ${kind} stream for image ${name}`);
    try {
      const headers: Record<string, string> = {
        "content-type": "application/octet-stream",
        "accept-ranges": "bytes",
        etag,
        "x-eos-version": version.manifest.version,
      };
      let start = 0;
      let end = range.length - 1;
      let status = 200;
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
      await sendRange(handle, start, end - start + 1, res, pool, limits);
      return end - start + 1;
    } finally {
      await handle.close();
    }
  }

  /** With `redirect`: a 302 to the file's presigned URL (the byte count is 0); undefined without. */
  async function redirected(
    res: ServerResponse,
    version: PublishedVersion,
    file: VersionFile,
    etag: string,
  ): Promise<number | undefined> {
    if (!options.redirect || !version.presign) return undefined;
    const location = await version.presign(file, options.redirect.expiresSeconds);
    res.writeHead(302, {
      location,
      "cache-control": "no-store",
      etag,
      "x-eos-version": version.manifest.version,
      "content-length": "0",
    });
    res.end();
    return 0;
  }

  async function route(
    req: IncomingMessage,
    res: ServerResponse,
    log: { device?: string; admin?: string },
  ): Promise<number> {
    const url = new URL(req.url ?? "/", "http://localhost");
    const path = url.pathname;
    const page = options.pages?.find((p) => p.handles(path));
    if (page) return page.handle(req, res, url, log);
    if (options.control?.handles(path))
      return options.control.handle(req, res, url, {
        device: () => authenticate(req),
        enroller: () => enroller(req),
        log,
      });
    if (req.method !== "GET" && req.method !== "HEAD")
      throw new HttpError(405, "only GET and HEAD", { allow: "GET, HEAD" });
    if (path === "/health") {
      const failed = await store.check().then(
        () => undefined,
        (error: unknown) => (error as Error).message,
      );
      if (failed) logger.error("health check failed", { storage: store.url, error: failed });
      return sendJson(res, failed ? 503 : 200, {
        status: failed ? "unavailable" : "ok",
        images: failed ? 0 : (await store.list()).length,
        store: failed ? "failed" : "ok",
        storage: store.kind,
      });
    }
    const device = await authenticate(req);
    if (device) log.device = device;
    if (path === "/v1/images") {
      const images = [];
      // Each image at the version assigned to this device (rollout wave, pin), as its manifest is.
      for (const name of await store.list()) {
        const v = await versionFor(name, device).catch(() => undefined);
        if (v) images.push({ name, version: v.manifest.version, signed: v.signatureBytes !== undefined });
      }
      return sendJson(res, 200, { images });
    }
    const d = /^\/v1\/images\/([^/]+)\/(?:deltas(?:\/([0-9a-f]{64}))?|(chunks))$/.exec(path);
    if (d) {
      const name = imageNameOf(d[1] as string);
      const client = device ?? req.socket.remoteAddress ?? "unknown";
      const from = d[2];
      if (from || d[3])
        return sendVersionFile(req, res, name, client, device, (v) =>
          from
            ? {
                file: { delta: from },
                missing: `no delta to ${name} ${v.manifest.version} from ${from.slice(0, 12)}…`,
              }
            : { file: "chunks", missing: `no chunk index for ${name} ${v.manifest.version}` },
        );
      const version = await versionFor(name, device);
      if (!version) throw new HttpError(404, `image ${name} is not published`);
      if (!version.deltaIndexBytes)
        throw new HttpError(404, `no deltas for ${name} ${version.manifest.version}`);
      return sendBytes(req, res, version.deltaIndexBytes, `"${version.vid}"`);
    }
    const a = /^\/v1\/images\/([^/]+)\/assignment$/.exec(path);
    if (a && options.resolve) {
      const from = url.searchParams.get("from") ?? "";
      if (!/^[0-9a-f]{64}$/.test(from))
        throw new HttpError(400, "from: the running root's sha256 (64 hex digits)");
      const bytes = await options.resolve.assignment(
        imageNameOf(a[1] as string),
        device,
        req.headers.authorization,
        from,
      );
      return sendBytes(req, res, bytes, `"${from}"`);
    }
    const m = /^\/v1\/images\/([^/]+)\/(manifest\.json|manifest\.json\.sig|root|firmware)$/.exec(path);
    if (!m) throw new HttpError(404, "no such resource");
    const name = imageNameOf(m[1] as string);
    const what = m[2] as string;
    if (what === "root" || what === "firmware")
      return stream(req, res, name, what, device ?? req.socket.remoteAddress ?? "unknown", device);
    const version = await versionFor(name, device);
    if (!version) throw new HttpError(404, `image ${name} is not published`);
    const bytes = what === "manifest.json" ? version.manifestBytes : version.signatureBytes;
    if (!bytes) throw new HttpError(404, `image ${name} is unsigned`);
    // The check reads the manifest: its answer carries when this device may switch to it.
    const window = what === "manifest.json" ? await options.windowOf?.(device) : undefined;
    return sendBytes(req, res, bytes, `"${version.vid}"`, window ? { [WINDOW_HEADER]: window } : {});
  }

  function imageNameOf(encoded: string): string {
    let name: string;
    try {
      name = decodeURIComponent(encoded);
    } catch {
      throw new HttpError(400, "invalid image name: bad percent-encoding");
    }
    if (!isSafeImageName(name)) throw new HttpError(400, "invalid image name");
    return name;
  }

  function sendBytes(
    req: IncomingMessage,
    res: ServerResponse,
    bytes: Buffer,
    etag: string,
    extra: Record<string, string> = {},
  ): number {
    res.writeHead(200, {
      "content-type": "application/json",
      "content-length": bytes.length,
      etag,
      "cache-control": "no-cache",
      ...extra,
    });
    res.end(req.method === "HEAD" ? undefined : bytes);
    return bytes.length;
  }

  /** A file of the version this device is served (a delta, the chunk index): 404 when it has none. */
  async function sendVersionFile(
    req: IncomingMessage,
    res: ServerResponse,
    name: string,
    client: string,
    device: string | undefined,
    fileOf: (version: PublishedVersion) => { file: VersionFile; missing: string },
  ): Promise<number> {
    const version = await versionFor(name, device);
    if (!version) throw new HttpError(404, `image ${name} is not published`);
    const { file, missing } = fileOf(version);
    const handle = await version.open(file);
    if (!handle) throw new HttpError(404, missing);
    const sent = await redirected(res, version, file, `"${version.vid}"`).catch(async (error: unknown) => {
      await handle.close();
      throw error;
    });
    if (sent !== undefined) {
      await handle.close();
      return sent;
    }
    const release = admit(client);
    try {
      const size = handle.size;
      res.writeHead(200, {
        "content-type": "application/octet-stream",
        "content-length": String(size),
        etag: `"${version.vid}"`,
        "x-eos-version": version.manifest.version,
      });
      if (req.method === "HEAD") {
        res.end();
        return 0;
      }
      await sendRange(handle, 0, size, res, pool, limits);
      return size;
    } finally {
      release();
      await handle.close();
    }
  }

  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const started = performance.now();
    const fields: { device?: string; admin?: string } = {};
    route(req, res, fields)
      .then((bytes) => ({ status: res.statusCode, bytes, error: undefined as string | undefined }))
      .catch((error: unknown) => {
        if (error instanceof HttpError) {
          if (!res.headersSent)
            sendJson(res, error.status, { error: error.message, ...error.detail }, error.headers);
          return { status: error.status, bytes: 0, error: error.message };
        }
        const message = (error as Error).message;
        if (error instanceof ClientGone) return { status: 499, bytes: 0, error: message };
        if (!res.headersSent) sendJson(res, 500, { error: "internal error" });
        else res.destroy();
        return { status: 500, bytes: 0, error: message };
      })
      .then(({ status, bytes, error }) => {
        // Refusals (4xx, 503 when full) are warnings; only a failure of the server itself is an error.
        const final = res.headersSent ? res.statusCode : status;
        options.counters?.observe(new URL(req.url ?? "/", "http://localhost").pathname, final, bytes);
        const level =
          status >= 500 && status !== 503 ? "error" : status >= 400 && status !== 499 ? "warn" : "info";
        logger.log(level, "request", {
          method: req.method,
          path: req.url,
          range: req.headers.range,
          status: final,
          bytes,
          ms: Math.round(performance.now() - started),
          device: fields.device,
          admin: fields.admin,
          remote: req.socket.remoteAddress,
          error,
        });
      });
  };
  return options.tls
    ? createHttpsServer({ cert: options.tls.cert, key: options.tls.key }, handler)
    : createHttpServer(handler);
}
