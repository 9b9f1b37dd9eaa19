/**
 * One of two processes that send the device's report queue at the same
 * moment (as `os-update --apply` and update_commit.service can):
 * `queue-flusher.ts ROOT WHO` sends what is queued for the device whose
 * root is ROOT through the real reporter, once ROOT/go exists. It says it
 * is ready by creating ROOT/ready-WHO.
 */
import { stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { openReporter } from "../../src/io/update/reporter.ts";
import { captureContext } from "./context.ts";

const [root, who] = process.argv.slice(2) as [string, string];
const { ctx } = captureContext({ root });
const events = await openReporter({ ctx, esp: join(root, "boot/efi"), online: false, warn: () => undefined });
await writeFile(join(root, `ready-${who}`), "");
while (!(await stat(join(root, "go")).catch(() => undefined))) await new Promise((r) => setTimeout(r, 2));
await events.flush();
