/**
 * One of two processes that write the device's report queue at the same
 * time: `queue-writer.ts ROOT WHO COUNT` notes COUNT `checked` events
 * through the real reporter of a device whose root is ROOT, once the file
 * ROOT/go exists (so that both writers start together). It says it is
 * ready by creating ROOT/ready-WHO.
 */
import { stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { openReporter } from "../../src/io/update/reporter.ts";
import { captureContext } from "./context.ts";

const [root, who, count] = process.argv.slice(2) as [string, string, string];
const { ctx } = captureContext({ root });
const events = await openReporter({ ctx, esp: join(root, "boot/efi"), online: false, warn: () => undefined });
await writeFile(join(root, `ready-${who}`), "");
while (!(await stat(join(root, "go")).catch(() => undefined))) await new Promise((r) => setTimeout(r, 2));
for (let i = 0; i < Number(count); i++)
  await events.note({
    type: "checked",
    version: `${who}.${i}`,
    slot: "A",
    sha256: "0".repeat(64),
    available: false,
  });
