/**
 * One writer of the root cache, as a separate process (the lock is per
 * process): obtains the entry for fixed inputs, its "build" taking a while
 * and counting itself in COUNT_FILE, and prints {dir, built} as JSON.
 * argv: CACHE_DIR COUNT_FILE BUILD_MS
 */
import { appendFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { RootCache } from "../../src/io/image/root-cache.ts";
import { systemRunner } from "../../src/io/process.ts";
import { fixedInputs } from "./root-cache-inputs.ts";

const [cacheDir, countFile, buildMs] = process.argv.slice(2) as [string, string, string];
const cache = new RootCache(cacheDir, systemRunner(), { pollMs: 100 });
const { entry, built } = await cache.obtain(fixedInputs(), async (fresh) => {
  await appendFile(countFile, `${process.pid}\n`);
  await writeFile(join(fresh.tree, "built-by"), `${process.pid}\n`);
  await sleep(Number(buildMs));
});
process.stdout.write(`${JSON.stringify({ dir: entry.dir, built })}\n`);
