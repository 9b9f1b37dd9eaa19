/**
 * An exclusive lock file holding the owner's pid. A lock whose owner is gone
 * (crash, power cut) is taken over; a live owner makes the caller fail at once
 * rather than wait, since updates are not something to queue silently.
 */
import { randomBytes } from "node:crypto";
import { link, readFile, unlink, writeFile } from "node:fs/promises";
import { EosError } from "../core/errors.ts";

export interface Lock {
  release(): Promise<void>;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

export async function acquireLock(path: string, what: string): Promise<Lock> {
  for (let attempt = 0; attempt < 3; attempt++) {
    // The lock appears with its owner's pid in it (a hard link of a finished file): a lock file
    // created empty and written after would look ownerless to another process in between, and be taken.
    const temp = `${path}.${process.pid}.${randomBytes(4).toString("hex")}`;
    try {
      await writeFile(temp, `${process.pid}\n`, { mode: 0o600, flag: "wx" });
      await link(temp, path);
      return { release: () => unlink(path).catch(() => undefined) };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      const owner = Number((await readFile(path, "utf8").catch(() => "")).trim());
      if (Number.isInteger(owner) && owner > 0 && alive(owner) && owner !== process.pid) {
        throw new EosError("LOCKED", `${what} is in progress (pid ${owner} holds ${path})`, {
          hint: "wait for it to finish",
        });
      }
      await unlink(path).catch(() => undefined);
    } finally {
      await unlink(temp).catch(() => undefined);
    }
  }
  throw new EosError("LOCKED", `cannot take the lock ${path}`);
}

/**
 * Runs `fn` holding the lock at `path`, waiting for another process that
 * holds it (for a short critical section) at most `waitMs`; then LOCKED.
 */
export async function withLock<T>(
  path: string,
  what: string,
  waitMs: number,
  fn: () => Promise<T>,
): Promise<T> {
  const deadline = Date.now() + waitMs;
  let lock: Lock | undefined;
  while (!lock) {
    try {
      lock = await acquireLock(path, what);
    } catch (error) {
      if (!(error instanceof EosError && error.code === "LOCKED") || Date.now() >= deadline) throw error;
      // A random pause keeps two waiters from retrying in step.
      await new Promise((resolve) => setTimeout(resolve, 2 + Math.random() * 8));
    }
  }
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}
