/**
 * A root staged by an --apply outside the maintenance window: written and
 * verified into the target slot, its content recorded in the boot control
 * block (core/update/bootctl.ts markStaged), but not put on trial. The next
 * --apply of the same version switches to it without downloading it again,
 * after hashing the slot again: the record only says what was verified
 * then, and the slot's bytes may have changed since.
 */
import { open } from "node:fs/promises";
import { performance } from "node:perf_hooks";
import type { ByteRange } from "../../core/gpt.ts";
import {
  markStaged,
  readBootState,
  recordedAs,
  type Slot,
  type SlotContent,
} from "../../core/update/bootctl.ts";
import type { Context } from "../context.ts";
import { hashRange } from "../hash.ts";
import { readBootControl, writeBootControl } from "./boot-control.ts";
import type { RootWrite } from "./root-write.ts";

/** sha256 of the first `size` bytes of a slot, read from the device itself (not stale cached pages). */
export async function hashSlot(ctx: Context, disk: string, range: ByteRange, size: number): Promise<string> {
  const handle = await open(disk, "r");
  try {
    if ((await handle.stat()).isBlockDevice())
      await ctx.proc.run(["blockdev", "--flushbufs", disk]).catch(() => undefined);
    return await hashRange(handle, range.offset, size);
  } finally {
    await handle.close();
  }
}

export interface StagedTarget {
  esp: string;
  disk: string;
  slot: Slot;
  range: ByteRange;
  content: SlotContent;
  say(line: string): void;
}

/** The staged slot as a finished write when it still verifies against the manifest; undefined: write it. */
export async function reuseStaged(ctx: Context, t: StagedTarget): Promise<RootWrite | undefined> {
  const state = readBootState(await readBootControl(t.esp));
  // Only a slot staged for a window: any other slot that happens to hold the version (one
  // rolled back from, say) is written afresh, as an --apply always did.
  if (state.staged !== t.slot || !recordedAs(state, t.slot, t.content)) return undefined;
  const started = performance.now();
  const sha = await hashSlot(ctx, t.disk, t.range, t.content.size).catch(() => "unreadable");
  const verifySeconds = (performance.now() - started) / 1000;
  if (sha !== t.content.sha256) {
    t.say(
      `slot ${t.slot} was staged with ${t.content.version} but no longer verifies (sha256 ${sha}): downloading it again`,
    );
    return undefined;
  }
  t.say(
    `slot ${t.slot} already holds ${t.content.version}, verified again in ${verifySeconds.toFixed(2)} s (sha256 ${sha.slice(0, 16)}…): not downloading it again`,
  );
  return { timing: { writeSeconds: 0, verifySeconds }, path: "staged", downloaded: 0 };
}

/** Records the verified slot as staged (closed window): it is not put on trial. */
export async function recordStaged(t: StagedTarget): Promise<void> {
  await writeBootControl(t.esp, markStaged(await readBootControl(t.esp), t.slot, t.content));
}
