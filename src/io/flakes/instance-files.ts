/**
 * A flake's instances on disk: the per-user directory of container id files
 * and provisioning records, and the lock file that serialises their updates.
 */
import { existsSync, readFileSync } from "node:fs";
import { chmod, lstat, mkdir, open, stat, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import { EosError } from "../../core/errors.ts";

/** `<ids_dir>/<uid>/`: instance id files and provisioning records of this user. */
import { writeFileAtomic } from "./flake-files.ts";
export function idsDirFor(idsDir: string): string {
  return join(idsDir, String(process.getuid?.() ?? 0));
}

/**
 * `<ids_dir>/<uid>/`, made if missing and checked to be ours alone: its id
 * files and provisioning records decide what the pilot runs, so a directory
 * another user could write is refused. `<ids_dir>` itself is shared (1777, as
 * /tmp) so every user can have their own directory in it.
 */
export async function ensureOwnIdsDir(idsDir: string): Promise<string> {
  const uid = process.getuid?.() ?? 0;
  if (!existsSync(idsDir)) {
    await mkdir(idsDir, { recursive: true });
    await chmod(idsDir, 0o1777).catch(() => undefined);
  }
  const dir = join(idsDir, String(uid));
  await mkdir(dir, { mode: 0o700 }).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== "EEXIST") throw error;
  });
  const st = await lstat(dir);
  if (!st.isDirectory() || st.uid !== uid || (st.mode & 0o022) !== 0) {
    throw new EosError("REFUSED", `${dir} must be a directory owned by uid ${uid} and writable only by it`, {
      hint: `remove it; the pilot makes it again`,
    });
  }
  return dir;
}

export function readSmallFileSync(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

export async function writeIdFile(path: string, content: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o755 });
  await writeFileAtomic(path, content, 0o644);
}

/**
 * A lock file next to an id file, so two first launches of a resume flake do
 * not start two instances. A lock older than `staleMs` is taken over.
 */
export async function withLockFile<T>(path: string, fn: () => Promise<T>, staleMs = 60_000): Promise<T> {
  await mkdir(dirname(path), { recursive: true });
  const deadline = Date.now() + staleMs;
  for (;;) {
    try {
      const handle = await open(path, "wx");
      await handle.writeFile(String(process.pid));
      await handle.close();
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      const st = await stat(path).catch(() => undefined);
      if (st && Date.now() - st.mtimeMs > staleMs) {
        await unlink(path).catch(() => undefined);
        continue;
      }
      if (Date.now() > deadline) throw new EosError("LOCKED", `${path}: held by another launch`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  try {
    return await fn();
  } finally {
    await unlink(path).catch(() => undefined);
  }
}
