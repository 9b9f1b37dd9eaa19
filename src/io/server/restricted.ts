/**
 * `os-update-server restricted`, the SSH forced command: the request in
 * SSH_ORIGINAL_COMMAND is parsed against a whitelist (core) and answered
 * from published images only. Nothing reaches a shell.
 */
import { createReadStream } from "node:fs";
import { pipeline } from "node:stream/promises";
import { parseRestrictedCommand } from "../../core/server/restricted-command.ts";
import type { Context } from "../context.ts";
import { DEFAULT_IMAGES_DIR, PublishedImages } from "./published.ts";
import { loadServerConfig, publishedDir } from "./server-config.ts";
import { deltaFileName } from "./deltas.ts";
import { fileExists } from "../files.ts";
import { join } from "node:path";

/** Answers one forced-command request; returns its exit code (1 and a message on stderr for a refusal). */
export async function answerRestricted(
  ctx: Context,
  o: { config?: string | undefined; imagesDir?: string | undefined },
): Promise<number> {
  const setup = await loadServerConfig(ctx, o.config, false);
  const dir = publishedDir(ctx, setup, o.imagesDir);
  const refuse = (reason: string) => {
    ctx.stderr.write(`os-update-server restricted: refused: ${reason}\n`);
    return 1;
  };
  const parsed = parseRestrictedCommand(ctx.env.SSH_ORIGINAL_COMMAND, [dir, DEFAULT_IMAGES_DIR]);
  if (!parsed.ok) return refuse(parsed.reason);
  const { request } = parsed;
  const store = new PublishedImages(dir);
  const version = await store.current(request.name).catch(() => undefined);
  if (request.kind === "test") return version ? 0 : 1;
  if (!version) return refuse(`image ${request.name} is not published`);
  if (request.kind === "deltas") {
    if (!version.deltaIndexBytes) return refuse(`no deltas for ${request.name} ${version.manifest.version}`);
    ctx.stdout.write(version.deltaIndexBytes);
    return 0;
  }
  if (request.kind === "delta" || request.kind === "chunks") {
    const [file, missing] =
      request.kind === "chunks"
        ? [version.chunksPath, `no chunk index for ${request.name} ${version.manifest.version}`]
        : [
            join(version.dir, "deltas", deltaFileName(request.from)),
            `no delta to ${request.name} ${version.manifest.version} from ${request.from.slice(0, 12)}…`,
          ];
    if (!(await fileExists(file))) return refuse(missing);
    await pipeline(createReadStream(file, { highWaterMark: 1 << 20 }), ctx.stdout, { end: false });
    return 0;
  }
  if (request.what === "manifest" || request.what === "signature") {
    const bytes = request.what === "manifest" ? version.manifestBytes : version.signatureBytes;
    if (!bytes) return refuse(`image ${request.name} is unsigned`);
    ctx.stdout.write(bytes.subarray(request.offset));
    return 0;
  }
  if (request.what === "disk") {
    await pipeline(createReadStream(version.rawPath, { highWaterMark: 1 << 20 }), ctx.stdout, { end: false });
    return 0;
  }
  const range = version.ranges[request.what];
  if (!range) return refuse(`image ${request.name} has no ${request.what} partition`);
  if (request.offset > range.length) return refuse("OFFSET is past the end of the stream");
  const end = Math.min(request.end ?? range.length, range.length);
  if (request.offset === end) return 0;
  await pipeline(
    createReadStream(version.rawPath, {
      start: range.offset + request.offset,
      end: range.offset + end - 1,
      highWaterMark: 1 << 20,
    }),
    ctx.stdout,
    { end: false },
  );
  return 0;
}
