/**
 * Where a device gets its update from: the update server over HTTPS (bearer
 * token) or, as the original did, over SSH with the fleet key against
 * `os-update-server restricted`. Both give the manifest, its signatures and
 * the partition streams from a byte offset, so an interrupted download resumes.
 */
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { rootCertificates } from "node:tls";
import type { Readable } from "node:stream";
import { EosError } from "../../core/errors.ts";
import { pipeThrough, type ProcessRunner } from "../process.ts";
import { readBounded } from "../read-bounded.ts";
import { WINDOW_HEADER } from "../../core/fleet/window.ts";

export type StreamKind = "root" | "firmware";

export interface StreamResponse {
  stream: Readable;
  /** First byte the stream carries: the requested offset, or 0 when the server restarted it. */
  offset: number;
}

export interface UpdateSource {
  describe: string;
  /** The manifest, its signatures, and (HTTPS) the device's maintenance window the server sent with them. */
  fetchManifest(): Promise<{ manifest: Buffer; signature: Buffer; window?: string | undefined }>;
  /**
   * The stream from `offset`; with `end`, up to that byte (exclusive): the
   * server may still send more (an answer without Range), the caller stops.
   */
  openStream(
    kind: StreamKind,
    offset: number,
    etag: string | undefined,
    end?: number | undefined,
  ): Promise<StreamResponse>;
  /** The server's delta index for its current version; undefined when it offers none. */
  fetchDeltaIndex(): Promise<Buffer | undefined>;
  /** The delta from the root with this sha256 to the current version. */
  openDelta(fromSha256: string): Promise<Readable>;
  /** The root's chunk index, at most `maxBytes`; undefined when the server has none. */
  fetchChunkIndex?(maxBytes: number): Promise<Buffer | undefined>;
  /**
   * The server's signed downgrade assignment for this device running the
   * root with this sha256 (HTTPS only), with the token it is bound to;
   * undefined when the server assigns none.
   */
  fetchAssignment?(fromSha256: string): Promise<{ body: Buffer; token: string | undefined } | undefined>;
}

export interface HttpSourceOptions {
  url: string;
  name: string;
  token: string | undefined;
  ca: Buffer | undefined;
  timeoutMs?: number;
}

function httpGetOnce(
  url: URL,
  headers: Record<string, string>,
  ca: Buffer | Array<string | Buffer> | undefined,
  timeoutMs: number,
): Promise<IncomingMessage> {
  const request = url.protocol === "https:" ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(url, { headers, agent: false, ...(ca ? { ca } : {}) }, resolve);
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs / 1000} s`)));
    req.on("error", (error: NodeJS.ErrnoException) =>
      reject(
        new EosError("NETWORK", `${url.origin}: ${error.code ?? error.message}`, {
          hint: "is the update server reachable? check update.url in /etc/os-update.yml",
        }),
      ),
    );
    req.end();
  });
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

/**
 * A GET that follows the server's redirects (a server on object storage
 * sends devices to a presigned URL of the stream). Another origin gets
 * neither the bearer token nor If-Range (the server checked that, and the
 * URL names one version's object), and is verified against the public CAs
 * as well as the server's own.
 */
async function httpGet(
  url: URL,
  headers: Record<string, string>,
  ca: Buffer | undefined,
  timeoutMs: number,
): Promise<IncomingMessage> {
  let at = url;
  let sent = headers;
  for (let hop = 0; ; hop++) {
    const sameOrigin = at.origin === url.origin;
    const res = await httpGetOnce(at, sent, ca && !sameOrigin ? caWithPublic(ca) : ca, timeoutMs);
    const location = res.headers.location;
    if (!REDIRECTS.has(res.statusCode ?? 0) || location === undefined) return res;
    res.resume();
    if (hop >= 4) throw new EosError("HTTP", `${url.origin}: too many redirects`);
    const next = new URL(location, at);
    if (next.protocol !== "https:" && next.protocol !== "http:")
      throw new EosError("HTTP", `${url.origin}: redirected to a ${next.protocol} URL`);
    if (url.protocol === "https:" && next.protocol !== "https:")
      throw new EosError("HTTP", `${url.origin}: refused a redirect from HTTPS to ${next.origin}`);
    sent = { ...headers };
    delete sent["if-range"];
    if (next.origin !== url.origin) delete sent.authorization;
    at = next;
  }
}

let publicCas: string[] | undefined;
function caWithPublic(ca: Buffer): Array<string | Buffer> {
  publicCas ??= [...rootCertificates];
  return [...publicCas, ca];
}

function statusError(res: IncomingMessage, what: string): EosError {
  res.resume();
  if (res.statusCode === 401 && res.headers["x-eos-error"] === "REVOKED") {
    return new EosError("REVOKED", `${what}: the server revoked this device's token (HTTP 401)`, {
      hint: "an operator revoked this device (os-update-server devices revoke); ask them before enrolling it again",
    });
  }
  if (res.statusCode === 401 || res.statusCode === 403) {
    return new EosError("AUTH", `${what}: the server refused this device's token (HTTP ${res.statusCode})`, {
      hint: "run `fleet --getkey`, or check update.token",
    });
  }
  if (res.statusCode === 404)
    return new EosError("NOT_FOUND", `${what}: not published on the server (HTTP 404)`);
  return new EosError("HTTP", `${what}: HTTP ${res.statusCode}`);
}

export function httpSource(options: HttpSourceOptions): UpdateSource {
  const base = options.url.replace(/\/+$/, "");
  const timeout = options.timeoutMs ?? 30_000;
  const headers = (): Record<string, string> => ({
    "user-agent": "eos-os-update",
    ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
  });
  const url = (suffix: string) => new URL(`${base}/v1/images/${encodeURIComponent(options.name)}/${suffix}`);
  const small = async (suffix: string) => {
    const res = await httpGet(url(suffix), headers(), options.ca, timeout);
    if (res.statusCode !== 200) throw statusError(res, `${options.name} ${suffix}`);
    return { body: await readBounded(res, 1 << 20, `${options.name} ${suffix}`), headers: res.headers };
  };
  /** A document the server may not have: undefined on 404. */
  const optional = async (suffix: string, maxBytes: number) => {
    const res = await httpGet(url(suffix), headers(), options.ca, timeout);
    if (res.statusCode === 404) {
      res.resume();
      return undefined;
    }
    if (res.statusCode !== 200) throw statusError(res, `${options.name} ${suffix}`);
    return readBounded(res, maxBytes, `${options.name} ${suffix}`);
  };
  return {
    describe: base,
    async fetchManifest() {
      const manifest = await small("manifest.json");
      const window = manifest.headers[WINDOW_HEADER];
      return {
        manifest: manifest.body,
        signature: (await small("manifest.json.sig")).body,
        window: typeof window === "string" ? window : undefined,
      };
    },
    async fetchDeltaIndex() {
      return optional("deltas", 1 << 20);
    },
    async fetchChunkIndex(maxBytes) {
      return optional("chunks", maxBytes);
    },
    async openDelta(fromSha256) {
      const res = await httpGet(url(`deltas/${fromSha256}`), headers(), options.ca, timeout);
      if (res.statusCode !== 200)
        throw statusError(res, `${options.name} delta from ${fromSha256.slice(0, 12)}…`);
      return res;
    },
    async fetchAssignment(fromSha256) {
      const res = await httpGet(url(`assignment?from=${fromSha256}`), headers(), options.ca, timeout);
      if (res.statusCode === 404) {
        res.resume();
        return undefined;
      }
      if (res.statusCode !== 200) throw statusError(res, `${options.name} assignment`);
      return { body: await readBounded(res, 64 << 10, `${options.name} assignment`), token: options.token };
    },
    async openStream(kind, offset, etag, end) {
      const h = headers();
      if (offset > 0 || end !== undefined) {
        h.range = `bytes=${offset}-${end === undefined ? "" : end - 1}`;
        if (etag) h["if-range"] = etag;
      }
      const res = await httpGet(url(kind), h, options.ca, timeout);
      if (res.statusCode === 206) return { stream: res, offset };
      if (res.statusCode === 200) return { stream: res, offset: 0 };
      throw statusError(res, `${options.name} ${kind}`);
    },
  };
}

export interface SshSourceOptions {
  server: string;
  name: string;
  pkey: string | undefined;
  port: number | undefined;
  knownHosts: string | undefined;
  proc: ProcessRunner;
}

export function sshArgs(
  options: Pick<SshSourceOptions, "server" | "pkey" | "port" | "knownHosts">,
  command: string,
): string[] {
  return [
    ...(options.pkey ? ["-i", options.pkey, "-o", "IdentitiesOnly=yes"] : []),
    ...(options.port ? ["-p", String(options.port)] : []),
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=30",
    "-o",
    "ServerAliveInterval=15",
    ...(options.knownHosts
      ? ["-o", "StrictHostKeyChecking=yes", "-o", `UserKnownHostsFile=${options.knownHosts}`]
      : ["-o", "StrictHostKeyChecking=accept-new"]),
    "-o",
    "LogLevel=ERROR",
    "--",
    options.server,
    command,
  ];
}

/** Runs one remote read; the stream errors if ssh or the remote side fails. */
function sshStream(options: SshSourceOptions, command: string): Readable {
  return pipeThrough(options.proc, ["ssh", ...sshArgs(options, command)], {
    fail: (code, stderr) =>
      /restricted: refused/.test(stderr)
        ? new EosError("AUTH", `${options.server}: ${stderr}`)
        : new EosError("NETWORK", `ssh ${options.server} exited ${code}: ${stderr}`),
    notStarted: (error) =>
      new EosError("NETWORK", `cannot run ssh: ${error.message}`, { hint: "install openssh-client" }),
  });
}

export function sshSource(options: SshSourceOptions): UpdateSource {
  /** A document the server may not have, or a server from before it knew it (refused as unknown). */
  const optional = async (what: string, maxBytes: number, none: RegExp) => {
    try {
      return await readBounded(sshStream(options, `eos-read ${options.name} ${what}`), maxBytes, what);
    } catch (error) {
      if (error instanceof EosError && (none.test(error.message) || /unknown|usage/i.test(error.message)))
        return undefined;
      throw error;
    }
  };
  return {
    describe: `ssh://${options.server}`,
    async fetchManifest() {
      const manifest = await readBounded(
        sshStream(options, `eos-read ${options.name} manifest`),
        1 << 20,
        "manifest",
      );
      const signature = await readBounded(
        sshStream(options, `eos-read ${options.name} signature`),
        1 << 20,
        "signature",
      );
      return { manifest, signature };
    },
    async openStream(kind, offset, _etag, end) {
      const range = end === undefined ? `${offset}` : `${offset} ${end}`;
      return { stream: sshStream(options, `eos-read ${options.name} ${kind} ${range}`), offset };
    },
    async fetchDeltaIndex() {
      return optional("deltas", 1 << 20, /no deltas/);
    },
    async fetchChunkIndex(maxBytes) {
      return optional("chunks", maxBytes, /no chunk index/);
    },
    async openDelta(fromSha256) {
      return sshStream(options, `eos-read ${options.name} delta ${fromSha256}`);
    },
  };
}

/**
 * The original `--read FILE`: `sudo cat /srv/www/fleet/os-images/FILE`, as
 * the original client sent it. FILE is a published image's file name: the
 * whole disk image (`NAME` or `NAME.raw`), its root stream (`NAME.raw.dev`)
 * or its firmware stream (`NAME.raw.firmware`).
 */
export function sshOriginalRead(options: Omit<SshSourceOptions, "name">, file: string): Readable {
  return sshStream({ ...options, name: file }, `sudo cat /srv/www/fleet/os-images/${file}`);
}
