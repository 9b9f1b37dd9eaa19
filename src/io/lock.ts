/**
 * An exclusive lock file holding the owner's pid. A lock whose owner is gone
 * (crash, power cut) is taken over; a live owner makes the caller fail at once
 * rather than wait, since updates are not something to queue silently.
 */
import { open, readFile, unlink } from "node:fs/promises";
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
    try {
      const handle = await open(path, "wx", 0o600);
      await handle.writeFile(`${process.pid}\n`);
      await handle.close();
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
    }
  }
  throw new EosError("LOCKED", `cannot take the lock ${path}`);
}
