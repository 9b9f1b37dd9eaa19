/**
 * `os-update-server restricted`, the SSH forced command: the request in
 * SSH_ORIGINAL_COMMAND is parsed against a whitelist (core) and answered
 * from published images only. Nothing reaches a shell.
 */
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { parseRestrictedCommand } from "../../core/server/restricted-command.ts";
import type { Context } from "../context.ts";
import { DEFAULT_IMAGES_DIR } from "./published.ts";
import { loadServerConfig, publishedDir } from "./server-config.ts";
import { openImageStore, type RangeReader } from "./store.ts";

/** Copies bytes [start, end) of an opened file to stdout, and closes it. */
async function copyOut(ctx: Context, reader: RangeReader, start: number, end: number): Promise<void> {
  try {
    if (start >= end) return;
    const stream: Readable = await reader.stream(start, end);
    await pipeline(stream, ctx.stdout, { end: false });
  } finally {
    await reader.close();
  }
}

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
  const store = await openImageStore(ctx, setup, o.imagesDir);
  // A store that cannot be read is an error of the server, not a refusal: it says so on stderr.
  if (request.kind !== "test") await store.check();
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
        ? (["chunks", `no chunk index for ${request.name} ${version.manifest.version}`] as const)
        : ([
            { delta: request.from },
            `no delta to ${request.name} ${version.manifest.version} from ${request.from.slice(0, 12)}…`,
          ] as const);
    const reader = await version.open(file);
    if (!reader) return refuse(missing);
    await copyOut(ctx, reader, 0, reader.size);
    return 0;
  }
  if (request.what === "manifest" || request.what === "signature") {
    const bytes = request.what === "manifest" ? version.manifestBytes : version.signatureBytes;
    if (!bytes) return refuse(`image ${request.name} is unsigned`);
    ctx.stdout.write(bytes.subarray(request.offset));
    return 0;
  }
  if (request.what === "disk") {
    const reader = await version.open("raw");
    if (!reader) return refuse(`image ${request.name} has no disk image`);
    await copyOut(ctx, reader, 0, reader.size);
    return 0;
  }
  const range = version.ranges[request.what];
  if (!range) return refuse(`image ${request.name} has no ${request.what} partition`);
  if (request.offset > range.length) return refuse("OFFSET is past the end of the stream");
  const end = Math.min(request.end ?? range.length, range.length);
  if (request.offset === end) return 0;
  const reader = await version.open(request.what);
  if (!reader) return refuse(`image ${request.name} has no ${request.what} partition`);
  await copyOut(ctx, reader, request.offset, end);
  return 0;
}
