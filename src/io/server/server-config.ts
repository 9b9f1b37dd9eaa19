/**
 * The update server's settings: /etc/os-update.yml with `update:` as a list
 * of images to fetch (the original shape), where they are published, and
 * the defaults every server subcommand shares.
 */
import { readFile, stat } from "node:fs/promises";
import { parseYamlConfig, serverConfigSchema, type ServerConfig } from "../../core/config.ts";
import { EosError } from "../../core/errors.ts";
import { sysPath, type Context } from "../context.ts";
import { DEFAULT_IMAGES_DIR } from "./published.ts";

export const SERVER_CONFIG = "/etc/os-update-server.yml";
export const DEFAULT_TOKENS_DIR = "/etc/os-update-server/tokens";
export const DEFAULT_KEYS_DIR = "/usr/share/eos/keys";

export interface ServerSetup {
  config: ServerConfig;
  path: string;
}

/**
 * /etc/os-update-server.yml where it exists, else the original's
 * /etc/os-update.yml. A machine that is both a server and an EOS device (the
 * server image updates itself) needs both shapes: `update:` is the server's
 * list of images, and the device's map of where it updates from.
 */
async function defaultServerConfigPath(ctx: Context): Promise<string> {
  const own = sysPath(ctx, SERVER_CONFIG);
  return (await stat(own).catch(() => undefined)) ? own : sysPath(ctx, "/etc/os-update.yml");
}

/** `required`: fetch needs the file; serve and restricted run on defaults without one. */
export async function loadServerConfig(
  ctx: Context,
  file: string | undefined,
  required: boolean,
): Promise<ServerSetup> {
  const path = file ?? (await defaultServerConfigPath(ctx));
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch {
    if (!required && file === undefined) return { config: { update: [] }, path };
    throw new EosError("CONFIG", `${path}: cannot read the configuration`, { hint: "pass --config FILE" });
  }
  return { config: parseYamlConfig(text, path, serverConfigSchema), path };
}

/** Where published images live: --images-dir, else images_dir, else the original's /srv/www/fleet/os-images. */
export function publishedDir(ctx: Context, setup: ServerSetup, option: string | undefined): string {
  return option ?? setup.config.images_dir ?? sysPath(ctx, DEFAULT_IMAGES_DIR);
}
