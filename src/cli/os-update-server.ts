/**
 * `os-update-server`: fetch (the original os-fetch + os-update-daemon),
 * serve (HTTP/HTTPS), restricted (SSH forced command), token (device tokens).
 */
import { sysPath, type Context } from "../io/context.ts";
import { fetchAll } from "../io/server/fetch-all.ts";
import { syncFetchTimers } from "../io/server/fetch-timers.ts";
import { DEFAULT_IMAGES_DIR } from "../io/server/published.ts";
import { answerRestricted } from "../io/server/restricted.ts";
import { serve, type ServeOptions } from "../io/server/serve.ts";
import { DEFAULT_TOKENS_DIR } from "../io/server/server-config.ts";
import { TokenStore } from "../io/server/tokens.ts";
import { newProgram, parseProgram } from "./main.ts";

interface FetchOpts {
  config?: string;
  imagesDir?: string;
  image?: string[];
  daemon?: boolean;
  timers?: boolean;
  json?: boolean;
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
    .option("--image <name...>", "only these images: name, path (/srv/www/fleet/os-images/NAME.raw) or URL")
    .option("--daemon", "keep running, fetching each image at its interval (default 1h)")
    .option("--oneshot", "fetch once and exit (the default; the original daemon's flag)")
    .option(
      "--timers",
      "then enable and start os-update-daemon@NAME.timer per configured image, stop those of removed images (os-fetch.service)",
    )
    .option("--json", "print results as JSON")
    .action(async (opts: FetchOpts) => {
      const results = await fetchAll(ctx, { ...opts, images: opts.image });
      if (opts.daemon) return;
      let timersFailed = false;
      if (opts.timers) {
        const sync = await syncFetchTimers(ctx, opts.config);
        for (const unit of sync.enabled) ctx.stdout.write(`enabled ${unit}\n`);
        for (const unit of sync.disabled) ctx.stdout.write(`disabled ${unit}\n`);
        for (const f of sync.failed) ctx.stderr.write(`os-update-server: ${f.unit}: ${f.error}\n`);
        timersFailed = sync.failed.length > 0;
      }
      if (opts.json) ctx.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
      else {
        for (const r of results) {
          const detail = r.status === "failed" ? `: ${r.error}` : r.version ? ` ${r.version}` : "";
          ctx.stdout.write(`${r.name}: ${r.status}${detail}\n`);
        }
      }
      result = timersFailed || results.some((r) => r.status === "failed") ? 1 : 0;
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
    .option(
      "--state-dir <dir>",
      "the control plane's SQLite database lives here (default /var/lib/os-update-server)",
    )
    .action(async (opts: ServeOptions) => {
      await serve(ctx, opts);
    });
  program
    .command("restricted")
    .description("SSH forced command: serve only published image streams (reads SSH_ORIGINAL_COMMAND)")
    .option("--config <file>", "configuration (default /etc/os-update.yml)")
    .option("--images-dir <dir>", "published image directory")
    .action(async (opts: { config?: string; imagesDir?: string }) => {
      result = await answerRestricted(ctx, opts);
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
