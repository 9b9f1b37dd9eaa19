/**
 * `os-update-server serve`: the update HTTP(S) server on its address with
 * its tokens, until a signal stops it.
 */
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import v8 from "node:v8";
import vm from "node:vm";
import { EosError, errorMessage } from "../../core/errors.ts";
import { sysPath, type Context } from "../context.ts";
import { jsonLogger } from "../log.ts";
import { createUpdateServer } from "./http.ts";
import { DEFAULT_TOKENS_DIR, loadServerConfig } from "./server-config.ts";
import { openImageStore } from "./store.ts";
import { TokenStore } from "./tokens.ts";
import { openControlPlane } from "./fleet/open.ts";
import { versionResolver, windowLookup } from "./fleet/assigned.ts";
import { loadPrivateKey } from "../keys.ts";
import { RequestCounters } from "../../core/fleet/metrics.ts";
import { dashboard } from "./fleet/dashboard.ts";
import { observeRoutes } from "./fleet/observe.ts";

export interface ServeOptions {
  config?: string | undefined;
  imagesDir?: string | undefined;
  listen?: string | undefined;
  port?: string | undefined;
  cert?: string | undefined;
  tlsKey?: string | undefined;
  tokensDir?: string | undefined;
  stateDir?: string | undefined;
  assignmentKey?: string | undefined;
  auth: boolean;
}

/**
 * After a busy spell (hundreds of slow readers, say) the garbage they leave
 * is collected only when something allocates again, and an idle server does
 * not: collect it a few seconds after the last stream ended, so that memory
 * goes back to the system (with the allocator settings of os-update-server.service).
 */
function memoryReleaser(): () => void {
  let collect: (() => void) | undefined;
  try {
    v8.setFlagsFromString("--expose-gc");
    collect = vm.runInNewContext("gc") as () => void;
  } catch {
    collect = undefined;
  }
  let timer: NodeJS.Timeout | undefined;
  return () => {
    if (!collect || timer) return;
    // Twice: the native side of a closed TLS socket (OpenSSL's buffers, ~40 KiB) is freed by a
    // callback that runs after the collection that found it dead, and only the next one frees the
    // heap that callback released (1000 TLS readers: 120 MiB after one, 103 after the second).
    timer = setTimeout(() => {
      collect?.();
      timer = setTimeout(() => {
        timer = undefined;
        collect?.();
      }, 3000);
      timer.unref();
    }, 3000);
    timer.unref();
  };
}

export async function serve(ctx: Context, o: ServeOptions): Promise<void> {
  const setup = await loadServerConfig(ctx, o.config, false);
  const conf = setup.config.serve ?? {};
  const certPath = o.cert ?? conf.cert;
  const keyPath = o.tlsKey ?? conf.key;
  if ((certPath === undefined) !== (keyPath === undefined)) {
    throw new EosError("USAGE", "TLS needs both a certificate (--cert) and a key (--tls-key)");
  }
  const tls =
    certPath && keyPath ? { cert: await readFile(certPath), key: await readFile(keyPath) } : undefined;
  const logger = jsonLogger(ctx.stdout, ctx.now);
  let tokens: TokenStore | undefined;
  if (o.auth) {
    tokens = new TokenStore(o.tokensDir ?? conf.tokens_dir ?? sysPath(ctx, DEFAULT_TOKENS_DIR));
    await tokens.list();
  } else {
    logger.warn("serving without authentication (--no-auth)");
  }
  const port = o.port !== undefined ? Number(o.port) : (conf.port ?? (tls ? 8443 : 8080));
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw new EosError("USAGE", `--port: not a port: ${o.port}`);
  const host = o.listen ?? conf.listen ?? "0.0.0.0";
  const store = await openImageStore(ctx, setup, o.imagesDir);
  // A bucket that is not there, or refuses the credentials, stops the server here with that said.
  if (setup.config.storage !== undefined) await store.check();
  if (conf.redirect && setup.config.storage === undefined)
    throw new EosError("CONFIG", `${setup.path}: serve.redirect needs storage: s3://… (object storage)`);
  // S3 signs URLs for at most 7 days; longer would fail every redirect, not the start.
  if (conf.redirect_expiry !== undefined && (conf.redirect_expiry < 1 || conf.redirect_expiry > 604_800))
    throw new EosError("CONFIG", `${setup.path}: serve.redirect_expiry: between 1s and 7d`);
  const fleet = await openControlPlane(ctx, setup, o.stateDir, logger, store);
  const signerPath = o.assignmentKey ?? conf.assignment_key;
  const assignmentKey = signerPath === undefined ? undefined : await loadPrivateKey(signerPath);
  const counters = new RequestCounters();
  const server = createUpdateServer({
    ...(fleet
      ? {
          control: fleet.control,
          // The dashboard at /ui, /health that checks the database too, /metrics (docs/dashboard.md).
          pages: [
            dashboard({ data: fleet.data, secure: tls !== undefined, now: ctx.now, logger }),
            observeRoutes({ data: fleet.data, counters, now: ctx.now, logger }),
          ],
          counters,
          resolve: versionResolver(store, fleet.rollouts, assignmentKey, logger, ctx.now),
        }
      : {}),
    // With a database the admin API can set windows (fleet/windows-api.ts); without one, the config's.
    ...(fleet || conf.windows
      ? {
          windowOf: windowLookup(
            {
              current: async () => (fleet ? (await fleet.windows.current()).windows : (conf.windows ?? [])),
              fallback: conf.windows ?? [],
            },
            fleet?.rollouts,
            logger,
          ),
        }
      : {}),
    store,
    ...(conf.redirect ? { redirect: { expiresSeconds: conf.redirect_expiry ?? 300 } } : {}),
    tokens,
    logger,
    onIdle: memoryReleaser(),
    ...(tls ? { tls } : {}),
    limits: {
      ...(conf.max_streams === undefined ? {} : { maxStreams: conf.max_streams }),
      ...(conf.max_streams_per_device === undefined
        ? {}
        : { maxStreamsPerClient: conf.max_streams_per_device }),
      ...(conf.stall === undefined ? {} : { stallMs: conf.stall * 1000 }),
      ...(conf.stall_bytes === undefined ? {} : { stallBytes: conf.stall_bytes }),
    },
  });
  server.listen(port, host);
  await Promise.race([
    once(server, "listening"),
    once(server, "error").then(([e]) => Promise.reject(e as Error)),
  ]).catch((error: unknown) => {
    throw new EosError("IO", `cannot listen on ${host}:${port}: ${errorMessage(error)}`);
  });
  const address = server.address() as AddressInfo;
  const shown = address.family === "IPv6" ? `[${address.address}]` : address.address;
  const url = `${tls ? "https" : "http"}://${shown}:${address.port}`;
  logger.info("listening", { url, storage: store.url, auth: Boolean(tokens) });
  // Soak times end without a report to notice it: judge the running rollouts on a timer as well.
  const judge = fleet
    ? setInterval(
        () => {
          fleet.rollouts
            .evaluate()
            .then((steps) => {
              for (const s of steps) logger.info("rollout", { id: s.id, ...s.step });
            })
            .catch((error: unknown) =>
              logger.error("judging rollouts failed", { error: errorMessage(error) }),
            );
        },
        (conf.rollout_interval ?? 30) * 1000,
      )
    : undefined;
  await new Promise<void>((resolve) => {
    if (ctx.signal.aborted) resolve();
    ctx.signal.addEventListener("abort", () => resolve(), { once: true });
  });
  clearInterval(judge);
  server.close();
  server.closeAllConnections();
  await fleet?.store.close();
  logger.info("stopped");
}
