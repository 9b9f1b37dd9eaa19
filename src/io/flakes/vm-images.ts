/**
 * The VM image store: /var/lib/firecracker/images/NAME/{rootfs,kernel,initrd}.
 * A pull stages everything in a hidden directory beside the store, checks
 * it (members, sha256), and only then renames it into place, so a failed or
 * interrupted pull leaves the store as it was.
 */
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, readdir, readFile, rename, rm, stat } from "node:fs/promises";
import { join, relative } from "node:path";
import { pipeline } from "node:stream/promises";
import type { Readable, Writable } from "node:stream";
import type { ProcessRunner } from "../process.ts";
import { EosError } from "../../core/errors.ts";
import {
  assertVmImageName,
  checksumPlan,
  classifyKisMembers,
  classifySource,
  parseSha256File,
  DEFAULT_IMAGES_DIR,
} from "../../core/flakes/kis.ts";
import { sysPath, type Context } from "../context.ts";
import { decompressStream } from "../decompress.ts";
import { openOrigin } from "../origin.ts";

export interface VmImagePaths {
  dir: string;
  rootfs: string;
  kernel: string;
  initrd: string;
}

/** The store: EOS_FIRECRACKER_IMAGES_DIR, or /var/lib/firecracker/images under the context root. */
export function vmImagesDir(ctx: Pick<Context, "env" | "root">): string {
  return ctx.env.EOS_FIRECRACKER_IMAGES_DIR || sysPath(ctx, DEFAULT_IMAGES_DIR);
}

export function vmImagePaths(store: string, name: string): VmImagePaths {
  const dir = join(store, assertVmImageName(name, "VM image name"));
  return { dir, rootfs: join(dir, "rootfs"), kernel: join(dir, "kernel"), initrd: join(dir, "initrd") };
}

async function isFile(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isFile() ?? false;
}

/** The pulled image, or NOT_FOUND naming what is missing. */
export async function requireVmImage(
  store: string,
  name: string,
): Promise<VmImagePaths & { hasInitrd: boolean }> {
  const paths = vmImagePaths(store, name);
  if (!(await isFile(paths.rootfs)) || !(await isFile(paths.kernel))) {
    throw new EosError(
      "NOT_FOUND",
      `VM image ${name} is not pulled (${paths.dir} has no rootfs and kernel)`,
      {
        hint: `pull it first: flake-ctl firecracker pull --name ${name} --kis-image URL`,
      },
    );
  }
  return { ...paths, hasInitrd: await isFile(paths.initrd) };
}

export async function listVmImages(store: string): Promise<string[]> {
  const entries = await readdir(store, { withFileTypes: true }).catch(() => []);
  return entries
    .filter((e) => e.isDirectory() && !e.name.startsWith("."))
    .map((e) => e.name)
    .sort();
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  await pipeline(createReadStream(path), hash);
  return hash.digest("hex");
}

async function openSource(
  source: string,
  what: string,
  env: NodeJS.ProcessEnv,
  signal: AbortSignal,
): Promise<Readable> {
  const allow = Boolean(env.FLAKE_ALLOW_INSECURE_TRANSPORT && env.FLAKE_ALLOW_INSECURE_TRANSPORT !== "0");
  const src = classifySource(source, what, allow);
  if (src.kind === "file" && !(await isFile(src.path ?? ""))) {
    throw new EosError("NOT_FOUND", `${what} ${source} does not exist`);
  }
  const origin = await openOrigin(src.url, { signal });
  if (origin.status !== "ok") throw new EosError("HTTP", `${what} ${source}: unexpected answer`);
  return origin.body;
}

/** Unpacks a (compressed) tar stream into `dir` with GNU tar: no absolute names, no `..`, no owners. */
async function untar(proc: ProcessRunner, input: Readable, dir: string, source: string): Promise<void> {
  const tar = proc.start(
    ["tar", "-x", "-f", "-", "-C", dir, "--no-same-owner", "--no-same-permissions", "--no-overwrite-dir"],
    { stdio: ["pipe", "ignore", "pipe"] },
  );
  let startError: Error | undefined;
  tar.child.once("error", (error) => (startError = error));
  const stdin = tar.child.stdin as Writable;
  stdin.on("error", () => undefined);
  let inputError: unknown;
  try {
    await pipeline(input, stdin);
  } catch (error) {
    inputError = error;
  }
  const { code: exit } = await tar.exited;
  if (startError) throw new EosError("VM", `cannot run tar: ${startError.message}`, { hint: "install tar" });
  const code = exit ?? 1;
  const stderr = tar.stderr();
  // A broken download or decompression is the error to report, whatever tar made of it.
  if (inputError instanceof EosError) throw inputError;
  if (code !== 0)
    throw new EosError(
      "VM",
      `${source}: not a KIS tarball (tar: ${stderr.trim().split("\n")[0] ?? `exit ${code}`})`,
    );
  // tar may stop reading at the end-of-archive blocks before the input ends (EPIPE, premature close): fine when tar succeeded.
}

async function walkFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) out.push(relative(dir, p));
    }
  };
  await walk(dir);
  return out.sort();
}

export interface PullOptions {
  name: string;
  kisImage?: string | undefined;
  rootfs?: string | undefined;
  kernel?: string | undefined;
  initrd?: string | undefined;
  force: boolean;
  log?: (line: string) => void;
}

/** Pulls an image into the store. Nothing changes in the store unless it all worked. */
export async function pullVmImage(
  ctx: Context,
  store: string,
  opts: PullOptions,
): Promise<VmImagePaths & { verified: string[] }> {
  const name = assertVmImageName(opts.name);
  const target = vmImagePaths(store, name);
  if (
    opts.kisImage !== undefined &&
    (opts.rootfs !== undefined || opts.kernel !== undefined || opts.initrd !== undefined)
  ) {
    throw new EosError("USAGE", "give either --kis-image or --rootfs/--kernel [--initrd], not both");
  }
  if (opts.kisImage === undefined && (opts.rootfs === undefined || opts.kernel === undefined)) {
    throw new EosError(
      "USAGE",
      "give --kis-image URL, or --rootfs URL and --kernel URL (and optionally --initrd URL)",
    );
  }
  // Sources are checked before anything is written.
  const allow = Boolean(
    ctx.env.FLAKE_ALLOW_INSECURE_TRANSPORT && ctx.env.FLAKE_ALLOW_INSECURE_TRANSPORT !== "0",
  );
  for (const [what, src] of [
    ["--kis-image", opts.kisImage],
    ["--rootfs", opts.rootfs],
    ["--kernel", opts.kernel],
    ["--initrd", opts.initrd],
  ] as const) {
    if (src !== undefined) classifySource(src, what, allow);
  }
  if ((await stat(target.dir).catch(() => undefined)) && !opts.force) {
    throw new EosError("REFUSED", `VM image ${name} is already pulled (${target.dir})`, {
      hint: "pass --force to replace it",
    });
  }
  await mkdir(store, { recursive: true });
  const staging = join(store, `.${name}.pull-${process.pid}`);
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { recursive: true, mode: 0o755 });
  const verified: string[] = [];
  try {
    if (opts.kisImage !== undefined) {
      const unpack = join(staging, "unpack");
      await mkdir(unpack);
      const body = await openSource(opts.kisImage, "--kis-image", ctx.env, ctx.signal);
      const { stream } = await decompressStream(ctx.proc, body);
      await untar(ctx.proc, stream, unpack, opts.kisImage);
      const files = await walkFiles(unpack);
      const members = classifyKisMembers(files, opts.kisImage);
      if (members.sha256) {
        const text = await readFile(join(unpack, members.sha256), "utf8");
        for (const [member, expected] of checksumPlan(
          parseSha256File(text, members.sha256),
          members,
          opts.kisImage,
        )) {
          const actual = await sha256File(join(unpack, member));
          if (actual !== expected) {
            throw new EosError(
              "HASH_MISMATCH",
              `${opts.kisImage}: ${member} has sha256 ${actual}, ${members.sha256} says ${expected}`,
              {
                hint: "the download is damaged or the image was changed: pull it again from a trusted source",
              },
            );
          }
          verified.push(member);
        }
      }
      await rename(join(unpack, members.rootfs), join(staging, "rootfs"));
      await rename(join(unpack, members.kernel), join(staging, "kernel"));
      if (members.initrd) await rename(join(unpack, members.initrd), join(staging, "initrd"));
      await rm(unpack, { recursive: true, force: true });
    } else {
      const parts: Array<[string, string | undefined, boolean]> = [
        ["rootfs", opts.rootfs, true],
        ["kernel", opts.kernel, false],
        ["initrd", opts.initrd, false],
      ];
      for (const [file, src, decompress] of parts) {
        if (src === undefined) continue;
        const body = await openSource(src, `--${file}`, ctx.env, ctx.signal);
        const stream = decompress ? (await decompressStream(ctx.proc, body)).stream : body;
        await pipeline(stream, createWriteStream(join(staging, file), { mode: 0o644 }));
      }
    }
    // Publish: the old image (if any) moves aside and goes only once the new one is in place.
    const old = join(store, `.${name}.old-${process.pid}`);
    const hadOld = Boolean(await stat(target.dir).catch(() => undefined));
    if (hadOld) await rename(target.dir, old);
    try {
      await rename(staging, target.dir);
    } catch (error) {
      if (hadOld) await rename(old, target.dir).catch(() => undefined);
      throw error;
    }
    if (hadOld) await rm(old, { recursive: true, force: true });
  } catch (error) {
    await rm(staging, { recursive: true, force: true });
    throw error;
  }
  return { ...target, verified };
}

export async function removeVmImage(store: string, name: string): Promise<boolean> {
  const paths = vmImagePaths(store, name);
  if (!(await stat(paths.dir).catch(() => undefined))) return false;
  await rm(paths.dir, { recursive: true, force: true });
  return true;
}
