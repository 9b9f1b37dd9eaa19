import { constants, existsSync } from "node:fs";
import { open, readdir, rename, unlink, stat, readFile, type FileHandle } from "node:fs/promises";
import { basename, delimiter, dirname, join } from "node:path";
import type { BlockSource } from "../core/gpt.ts";
import { EosError } from "../core/errors.ts";

let tempCounter = 0;
/**
 * This process among all that ever had its pid: a boot runs the same units in
 * the same order, so the commit after a power cut gets the cut commit's pid
 * and would meet its temp file. Not secret, so no node:crypto (launchers on a
 * hot path write files too).
 */
const processTag = `${process.pid}-${Math.random().toString(36).slice(2, 10)}`;

/**
 * Temp name beside the target, so the final rename stays on one file system.
 * The process tag + counter is unique among writers, and files are created
 * with O_EXCL.
 */
export function tempPathFor(target: string): string {
  return join(dirname(target), `.${basename(target)}.tmp-${processTag}-${tempCounter++}`);
}

/**
 * Removes the temp files that writers of `target` killed before their rename
 * left beside it (any process's but this one's, an earlier boot's process
 * with this pid included). Only for a target whose writers hold a lock, so
 * that no live writer's temp file goes.
 */
export async function removeStaleTemps(target: string): Promise<string[]> {
  const prefix = `.${basename(target)}.tmp-`;
  const ours = `${prefix}${processTag}-`;
  const removed: string[] = [];
  for (const name of await readdir(dirname(target)).catch(() => [] as string[])) {
    if (!name.startsWith(prefix) || name.startsWith(ours)) continue;
    await unlink(join(dirname(target), name)).catch(() => undefined);
    removed.push(name);
  }
  return removed;
}

export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** fsync of a file by name (after its rename: see atomicWriteFile). */
export async function fsyncFile(path: string): Promise<void> {
  const handle = await open(path, constants.O_RDONLY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Crash-safe replace: temp file, fsync, rename, fsync of the file under its
 * new name and of the directory. `beforeRename` runs once the temp file is
 * flushed (the power-cut tests stop there).
 *
 * The fsync after the rename is for FAT (the ESP): vfat moves the renamed
 * file into the replaced file's directory entry only in memory, and writes
 * that entry when the file's inode is written back, which a directory fsync
 * does not do, while the replaced file's clusters are freed at once. A power
 * cut then leaves the entry pointing at a free cluster (fsck.fat truncates
 * the file). The file's own fsync writes the entry, then the FAT.
 */
export async function atomicWriteFile(
  target: string,
  data: Buffer | string,
  mode = 0o644,
  hooks: { beforeRename?: () => void; owner?: { uid: number; gid: number } } = {},
): Promise<void> {
  const temp = tempPathFor(target);
  const handle = await open(temp, "wx", mode);
  try {
    await handle.writeFile(data);
    // Owner before the rename: the file never appears under its name with the wrong one.
    if (hooks.owner) await handle.chown(hooks.owner.uid, hooks.owner.gid);
    await handle.chmod(mode);
    await handle.sync();
  } catch (error) {
    await handle.close();
    await unlink(temp).catch(() => undefined);
    throw error;
  }
  await handle.close();
  hooks.beforeRename?.();
  try {
    await rename(temp, target);
  } catch (error) {
    await unlink(temp).catch(() => undefined);
    throw error;
  }
  await fsyncFile(target);
  await fsyncDir(dirname(target));
}

/** Size of a regular file or a block device (whose stat size is 0). */
export async function deviceSize(handle: FileHandle, path: string): Promise<number> {
  const st = await handle.stat();
  if (st.isFile()) return st.size;
  if (st.isBlockDevice()) {
    const sysSize = await readFile(
      `/sys/dev/block/${Math.floor(st.rdev / 256)}:${st.rdev % 256}/size`,
      "utf8",
    ).catch(() => undefined);
    if (sysSize) return Number(sysSize.trim()) * 512;
  }
  throw new EosError("IO", `${path}: cannot tell its size (not a file or block device)`);
}

export interface OpenedSource extends BlockSource {
  handle: FileHandle;
  path: string;
  close(): Promise<void>;
}

export async function openBlockSource(path: string, flags = "r"): Promise<OpenedSource> {
  let handle: FileHandle;
  try {
    handle = await open(path, flags);
  } catch (error) {
    throw new EosError("IO", `${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  const size = await deviceSize(handle, path).catch(async (error: unknown) => {
    await handle.close();
    throw error;
  });
  return {
    handle,
    path,
    size,
    async read(offset: number, length: number): Promise<Buffer> {
      const buf = Buffer.alloc(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await handle.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) throw new EosError("TRUNCATED", `${path}: short read at ${offset + done}`);
        done += bytesRead;
      }
      return buf;
    },
    close: () => handle.close(),
  };
}

export async function fileExists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

export async function removeQuietly(path: string): Promise<void> {
  await unlink(path).catch(() => undefined);
}

/** The program's full path in PATH (or the path itself when it has a slash), without running it. */
export function findInPath(program: string, env: NodeJS.ProcessEnv): string | undefined {
  if (program.includes("/")) return existsSync(program) ? program : undefined;
  for (const dir of (env.PATH ?? "/usr/local/bin:/usr/bin:/bin").split(delimiter)) {
    if (!dir) continue;
    const full = join(dir, program);
    if (existsSync(full)) return full;
  }
  return undefined;
}
