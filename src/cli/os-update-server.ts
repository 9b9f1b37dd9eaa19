/**
 * `os-update-server`: fetch (the original os-fetch + os-update-daemon),
 * serve (HTTP/HTTPS), restricted (SSH forced command), token (device tokens).
 */
import { readFile } from "node:fs/promises";
import { createReadStream } from "node:fs";
import { once } from "node:events";
import { pipeline } from "node:stream/promises";
import type { AddressInfo } from "node:net";
import { parseYamlConfig, serverConfigSchema, type ServerConfig, type ServerImage } from "../core/config.ts";
import { EosError, errorMessage } from "../core/errors.ts";
import { parseRestrictedCommand } from "../core/server/restricted-command.ts";
import { sysPath, type Context } from "../io/context.ts";
import { fetchImage, type FetchOutcome } from "../io/server/fetch.ts";
import { DEFAULT_IMAGES_DIR, ImageStore } from "../io/server/published.ts";
import { loadTrustedKeys } from "../io/keys.ts";
import { jsonLogger } from "../io/log.ts";
import { progress } from "../io/progress.ts";
import { TokenStore } from "../io/server/tokens.ts";
import { createUpdateServer } from "../io/server/http.ts";
import { newProgram, parseProgram } from "./main.ts";

const DEFAULT_TOKENS_DIR = "/etc/os-update-server/tokens";
const DEFAULT_KEYS_DIR = "/usr/share/eos/keys";
const DEFAULT_INTERVAL_S = 3600;

async function loadServerConfig(
  ctx: Context,
  file: string | undefined,
  required: boolean,
): Promise<ServerConfig> {
  const path = file ?? sysPath(ctx, "/etc/os-update.yml");
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch {
    if (!required && file === undefined) return { update: [] };
    throw new EosError("CONFIG", `${path}: cannot read the configuration`, { hint: "pass --config FILE" });
  }
  return parseYamlConfig(text, path, serverConfigSchema);
}

function imagesDir(ctx: Context, config: ServerConfig, option: string | undefined): string {
  return option ?? config.images_dir ?? sysPath(ctx, DEFAULT_IMAGES_DIR);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

interface FetchOpts {
  config?: string;
  imagesDir?: string;
  image?: string[];
  daemon?: boolean;
  json?: boolean;
}

async function runFetch(ctx: Context, opts: FetchOpts): Promise<number> {
  const config = await loadServerConfig(ctx, opts.config, true);
  const configPath = opts.config ?? sysPath(ctx, "/etc/os-update.yml");
  let images: ServerImage[] = config.update;
  if (opts.image?.length) {
    const wanted = new Set(opts.image.map((n) => n.replace(/\.raw$/, "")));
    images = images.filter((i) => wanted.has(i.name));
    const missing = [...wanted].filter((n) => !images.some((i) => i.name === n));
    if (missing.length)
      throw new EosError("CONFIG", `${configPath}: no image named ${missing.join(", ")} under update:`);
  }
  if (images.length === 0) throw new EosError("CONFIG", `${configPath}: update: lists no images`);
  const needKeys = images.some((i) => !i.insecure);
  const keyPaths = config.keys ?? [sysPath(ctx, DEFAULT_KEYS_DIR)];
  const trustedKeys = needKeys ? await loadTrustedKeys(keyPaths) : [];
  if (needKeys && trustedKeys.length === 0) {
    throw new EosError(
      "CONFIG",
      `${configPath}: keys: no trusted release keys found in ${keyPaths.join(", ")}`,
      {
        hint: "list release.pub files under keys:, or set insecure: true on an image to publish it unsigned",
      },
    );
  }
  const store = new ImageStore(imagesDir(ctx, config, opts.imagesDir));
  const logger = jsonLogger(ctx.stderr, ctx.now);
  const fetchOptions = {
    trustedKeys,
    logger,
    signal: ctx.signal,
    now: ctx.now,
    progress: (label: string, total: number | undefined) =>
      progress(ctx.stderr, label, total, { interactive: ctx.interactive, plainEverySeconds: 10 }),
    proc: ctx.proc,
  };
  const runOne = async (
    image: ServerImage,
  ): Promise<FetchOutcome | { name: string; status: "failed"; error: string }> => {
    try {
      return await fetchImage(store, image, fetchOptions);
    } catch (error) {
      const code = error instanceof EosError ? error.code : "INTERNAL";
      logger.error("fetch failed", { image: image.name, code, error: errorMessage(error) });
      return { name: image.name, status: "failed", error: errorMessage(error) };
    }
  };

  if (opts.daemon) {
    logger.info("fetch daemon started", { images: images.length });
    await Promise.all(
      images.map(async (image) => {
        const interval = (image.interval ?? config.interval ?? DEFAULT_INTERVAL_S) * 1000;
        while (!ctx.signal.aborted) {
          await runOne(image);
          await sleep(interval, ctx.signal);
        }
      }),
    );
    logger.info("fetch daemon stopped");
    return 0;
  }

  const results = [];
  for (const image of images) results.push(await runOne(image));
  if (opts.json) ctx.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
  else {
    for (const r of results) {
      const detail =
        r.status === "failed" ? `: ${"error" in r ? r.error : ""}` : r.version ? ` ${r.version}` : "";
      ctx.stdout.write(`${r.name}: ${r.status}${detail}\n`);
    }
  }
  return results.some((r) => r.status === "failed") ? 1 : 0;
}

interface ServeOpts {
  config?: string;
  imagesDir?: string;
  listen?: string;
  port?: string;
  cert?: string;
  tlsKey?: string;
  tokensDir?: string;
  auth: boolean;
}

async function runServe(ctx: Context, opts: ServeOpts): Promise<number> {
  const config = await loadServerConfig(ctx, opts.config, false);
  const serve = config.serve ?? {};
  const certPath = opts.cert ?? serve.cert;
  const keyPath = opts.tlsKey ?? serve.key;
  if ((certPath === undefined) !== (keyPath === undefined)) {
    throw new EosError("USAGE", "TLS needs both a certificate (--cert) and a key (--tls-key)");
  }
  const tls =
    certPath && keyPath ? { cert: await readFile(certPath), key: await readFile(keyPath) } : undefined;
  const logger = jsonLogger(ctx.stdout, ctx.now);
  let tokens: TokenStore | undefined;
  if (opts.auth) {
    const dir = opts.tokensDir ?? serve.tokens_dir ?? sysPath(ctx, DEFAULT_TOKENS_DIR);
    tokens = new TokenStore(dir);
    await tokens.list();
  } else {
    logger.warn("serving without authentication (--no-auth)");
  }
  const port = opts.port !== undefined ? Number(opts.port) : (serve.port ?? (tls ? 8443 : 8080));
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw new EosError("USAGE", `--port: not a port: ${opts.port}`);
  const host = opts.listen ?? serve.listen ?? "0.0.0.0";
  const store = new ImageStore(imagesDir(ctx, config, opts.imagesDir));
  const server = createUpdateServer({ store, tokens, logger, ...(tls ? { tls } : {}) });
  server.listen(port, host);
  await Promise.race([
    once(server, "listening"),
    once(server, "error").then(([e]) => Promise.reject(e as Error)),
  ]).catch((error: unknown) => {
    throw new EosError("IO", `cannot listen on ${host}:${port}: ${errorMessage(error)}`);
  });
  const address = server.address() as AddressInfo;
  const url = `${tls ? "https" : "http"}://${address.family === "IPv6" ? `[${address.address}]` : address.address}:${address.port}`;
  logger.info("listening", { url, images_dir: store.dir, auth: Boolean(tokens) });
  await new Promise<void>((resolve) => {
    if (ctx.signal.aborted) resolve();
    ctx.signal.addEventListener("abort", () => resolve(), { once: true });
  });
  server.close();
  server.closeAllConnections();
  logger.info("stopped");
  return 0;
}

async function runRestricted(ctx: Context, opts: { config?: string; imagesDir?: string }): Promise<number> {
  const config = await loadServerConfig(ctx, opts.config, false);
  const dir = imagesDir(ctx, config, opts.imagesDir);
  const refuse = (reason: string) => {
    ctx.stderr.write(`os-update-server restricted: refused: ${reason}\n`);
    return 1;
  };
  const parsed = parseRestrictedCommand(ctx.env.SSH_ORIGINAL_COMMAND, [dir, DEFAULT_IMAGES_DIR]);
  if (!parsed.ok) return refuse(parsed.reason);
  const { request } = parsed;
  const store = new ImageStore(dir);
  const version = await store.current(request.name).catch(() => undefined);
  if (request.kind === "test") return version ? 0 : 1;
  if (!version) return refuse(`image ${request.name} is not published`);
  if (request.what === "manifest" || request.what === "signature") {
    const bytes = request.what === "manifest" ? version.manifestBytes : version.signatureBytes;
    if (!bytes) return refuse(`image ${request.name} is unsigned`);
    ctx.stdout.write(bytes.subarray(request.offset));
    return 0;
  }
  const range = version.ranges[request.what];
  if (!range) return refuse(`image ${request.name} has no ${request.what} partition`);
  if (request.offset > range.length) return refuse("OFFSET is past the end of the stream");
  if (request.offset === range.length) return 0;
  await pipeline(
    createReadStream(version.rawPath, {
      start: range.offset + request.offset,
      end: range.offset + range.length - 1,
      highWaterMark: 1 << 20,
    }),
    ctx.stdout,
    { end: false },
  );
  return 0;
}

export async function osUpdateServerMain(argv: string[], ctx: Context): Promise<number> {
  const program = newProgram("os-update-server", ctx).description(
    "EOS update server: fetches images from their origin, publishes and serves them",
  );
  let result = 0;
  program
    .command("fetch")
    .description(
      "fetch the images in /etc/os-update.yml from their origin and publish them (exit 1 if any failed)",
    )
    .option("--config <file>", "configuration (default /etc/os-update.yml)")
    .option("--images-dir <dir>", `published image directory (default ${DEFAULT_IMAGES_DIR})`)
    .option("--image <name...>", "only these images")
    .option("--daemon", "keep running, fetching each image at its interval (default 1h)")
    .option("--oneshot", "fetch once and exit (the default; the original daemon's flag)")
    .option("--json", "print results as JSON")
    .action(async (opts: FetchOpts) => {
      result = await runFetch(ctx, opts);
    });
  program
    .command("serve")
    .description("serve published images over HTTP(S)")
    .option("--config <file>", "configuration (default /etc/os-update.yml)")
    .option("--images-dir <dir>", "published image directory")
    .option("--listen <address>", "address to listen on (default 0.0.0.0)")
    .option("--port <port>", "port (default 8080, 8443 with TLS; 0 picks a free one)")
    .option("--cert <file>", "TLS certificate (PEM)")
    .option("--tls-key <file>", "TLS private key (PEM)")
    .option("--tokens-dir <dir>", `device tokens (default ${DEFAULT_TOKENS_DIR})`)
    .option("--no-auth", "serve without device tokens (trusted networks only)")
    .action(async (opts: ServeOpts) => {
      result = await runServe(ctx, opts);
    });
  program
    .command("restricted")
    .description("SSH forced command: serve only published image streams (reads SSH_ORIGINAL_COMMAND)")
    .option("--config <file>", "configuration (default /etc/os-update.yml)")
    .option("--images-dir <dir>", "published image directory")
    .action(async (opts: { config?: string; imagesDir?: string }) => {
      result = await runRestricted(ctx, opts);
    });
  const token = program.command("token").description("manage per-device bearer tokens");
  const tokensDirOption = ["--tokens-dir <dir>", `device tokens (default ${DEFAULT_TOKENS_DIR})`] as const;
  const tokenStore = (dir: string | undefined) => new TokenStore(dir ?? sysPath(ctx, DEFAULT_TOKENS_DIR));
  token
    .command("add")
    .description("create a token for a device and print it once")
    .argument("<device>")
    .option(...tokensDirOption)
    .action(async (device: string, opts: { tokensDir?: string }) => {
      ctx.stdout.write(`${await tokenStore(opts.tokensDir).add(device)}\n`);
    });
  token
    .command("revoke")
    .description("revoke a device's token")
    .argument("<device>")
    .option(...tokensDirOption)
    .action(async (device: string, opts: { tokensDir?: string }) => {
      await tokenStore(opts.tokensDir).revoke(device);
    });
  token
    .command("list")
    .description("list devices that have a token")
    .option(...tokensDirOption)
    .action(async (opts: { tokensDir?: string }) => {
      for (const device of await tokenStore(opts.tokensDir).list()) ctx.stdout.write(`${device}\n`);
    });
  const early = await parseProgram(program, argv);
  return early ?? result;
}
