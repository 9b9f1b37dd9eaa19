/**
 * The overlay drive of a VM flake: a sparse ext4 image of `overlay_size`
 * whose `upper/` is the writable layer sci puts over the read-only root
 * (and `work/` overlayfs's work directory). `--include-tar` and
 * `--include-path` content is put into `upper/` when the file system is made
 * (mke2fs -d), so nothing is mounted on the host.
 *
 * mke2fs runs once per flake and size (a template, lazily initialised and
 * sparse); each launch gets a sparse copy of it, which costs milliseconds
 * instead of a mkfs on every launch.
 */
import { mkdir, mkdtemp, rename, rm, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { EosError } from "../../core/errors.ts";
import { fnv1a } from "../../core/fnv.ts";
import type { ProcessRunner } from "../process.ts";

async function run(proc: ProcessRunner, argv: string[], what: string): Promise<void> {
  await proc.run(argv, {
    code: "VM",
    what: `${what}: ${argv[0] ?? ""}`,
    capture: false,
    ...(argv[0] === "mke2fs" ? { hint: "install e2fsprogs" } : {}),
  });
}

async function stampOf(path: string): Promise<string> {
  const st = await stat(path).catch(() => undefined);
  if (!st) throw new EosError("NOT_FOUND", `include ${path} does not exist`);
  return `${path}:${st.size}:${st.mtimeMs}`;
}

export interface OverlaySpec {
  bytes: number;
  includeTar: string[];
  includePath: string[];
}

/** Makes (or finds) the template for `spec` in `dir`; returns its path. */
export async function overlayTemplate(
  proc: ProcessRunner,
  dir: string,
  key: string,
  spec: OverlaySpec,
): Promise<string> {
  const stamps = [String(spec.bytes)];
  for (const p of [...spec.includeTar, ...spec.includePath]) stamps.push(await stampOf(p));
  const file = join(dir, `${key}.overlay-${fnv1a(stamps.join("\0"))}.img`);
  if ((await stat(file).catch(() => undefined))?.isFile()) return file;
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tree = await mkdtemp(join(dir, `.${key}.tree-`));
  const temp = `${file}.tmp-${process.pid}`;
  try {
    await mkdir(join(tree, "upper"), { mode: 0o755 });
    await mkdir(join(tree, "work"), { mode: 0o755 });
    for (const tar of spec.includeTar) {
      await run(
        proc,
        ["tar", "-x", "-f", tar, "-C", join(tree, "upper"), "--no-same-owner"],
        `include ${tar}`,
      );
    }
    for (const path of spec.includePath) {
      const dest = join(tree, "upper", path);
      await mkdir(dirname(dest), { recursive: true });
      await run(proc, ["cp", "-a", "--", path, dest], `include ${path}`);
    }
    await run(
      proc,
      [
        "mke2fs",
        "-q",
        "-F",
        "-t",
        "ext4",
        "-m",
        "0",
        "-L",
        "flake-overlay",
        "-E",
        "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
        "-d",
        tree,
        temp,
        `${Math.floor(spec.bytes / 1024)}k`,
      ],
      "overlay",
    );
    await rename(temp, file);
  } finally {
    await rm(tree, { recursive: true, force: true });
    await rm(temp, { force: true });
  }
  // Older templates of this flake (other sizes or includes) are no longer needed.
  const { readdir } = await import("node:fs/promises");
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (name.startsWith(`${key}.overlay-`) && join(dir, name) !== file)
      await rm(join(dir, name), { force: true });
  }
  return file;
}

/** A sparse copy of the template (reflink where the file system can). */
export async function copyOverlay(proc: ProcessRunner, template: string, dest: string): Promise<void> {
  await run(proc, ["cp", "--sparse=always", "--reflink=auto", "--", template, dest], "overlay copy");
}
