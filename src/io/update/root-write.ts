/**
 * Which way the new root reaches the target slot, and writing it that way:
 * the cheapest path the device can verify (issue 12): a pair delta from its
 * running root, else the chunk index (chunks it holds are copied, the rest
 * fetched by range), else the full stream. A path that fails (other than
 * being stopped or out of time) falls back to the full stream with a line
 * that says why; every path ends in the same whole-slot sha256 check against
 * the signed manifest, and the slot stays marked invalid until then.
 */
import type { ByteRange } from "../../core/gpt.ts";
import { otherSlot } from "../../core/update/bootctl.ts";
import { EosError, errorMessage } from "../../core/errors.ts";
import { streamBytes, type Manifest, type ManifestPartition } from "../../core/manifest.ts";
import type { Context } from "../context.ts";
import { progress, type Progress } from "../progress.ts";
import type { TransferLimits } from "../watchdog.ts";
import { writeSlotFromChunks } from "./chunk-apply.ts";
import { planChunks, type ChunkPlan } from "./chunk-path.ts";
import {
  DELTA_DECODE,
  DELTA_DOWNLOAD,
  planDelta,
  writeSlotFromDelta,
  type DeltaPlan,
} from "./delta-apply.ts";
import { writeSlot, type WriteSlotResult } from "./slot-writer.ts";
import { identityBytes } from "./running-root.ts";
import type { SlotLayout } from "./slots.ts";
import type { UpdateSource } from "./source.ts";

export type UpdatePlan = DeltaPlan | ChunkPlan;

/**
 * The plan for this device: a delta for its running root, else the chunk
 * index, else the full stream. Without `exact` the target slot is not read
 * (a check must stay cheap), so the chunk path's figure is an upper bound: a
 * resumed apply finds part of it there already.
 */
interface PlanInputs {
  ctx: Context;
  source: UpdateSource;
  manifest: Manifest;
  runningSha: string | undefined;
  layout: SlotLayout;
}

/** The chunk path for this device, or why not. */
function planChunksFor(o: PlanInputs, exact: boolean): Promise<ChunkPlan | { none: string }> {
  const running = o.layout.slots[o.layout.running]?.range;
  return planChunks({
    ctx: o.ctx,
    source: o.source,
    manifest: o.manifest,
    runningSha: o.runningSha,
    exact,
    disk: o.layout.disk,
    running,
    runningBytes: running ? identityBytes(running, o.manifest.partitions.root.size) : 0,
    target: o.layout.slots[otherSlot(o.layout.running)]?.range,
  });
}

export async function planUpdate(
  o: PlanInputs & {
    exact: boolean;
    /** --no-delta: the full stream. */
    noDelta?: boolean | undefined;
  },
): Promise<UpdatePlan> {
  if (o.noDelta) return { path: "full", reason: "asked for (--no-delta)" };
  const delta = await planDelta(o.source, o.ctx.env, o.manifest, o.runningSha);
  if (delta.path === "delta") return delta;
  const chunks = await planChunksFor(o, o.exact);
  if ("path" in chunks) return chunks;
  return { path: "full", reason: `${delta.reason}; ${chunks.none}` };
}

/** Whether planBytes is what the plan downloads, or (a check's chunk path) an upper bound. */
export const planExact = (plan: UpdatePlan): boolean => plan.path !== "chunks" || plan.exact;

/** Bytes a plan downloads (the chunk index itself aside: it is fetched while planning). */
export function planBytes(plan: UpdatePlan, manifest: Manifest): number {
  if (plan.path === "delta") return plan.delta.size;
  if (plan.path === "chunks") return plan.work.fetchBytes;
  return streamBytes(manifest.partitions.root);
}

/** A plan in one line, for --check and the log. */
export function describePlan(plan: UpdatePlan, root: ManifestPartition): string {
  const full = streamBytes(root);
  if (plan.path === "delta") return `a delta of ${plan.delta.size} bytes (the full root is ${full})`;
  if (plan.path === "chunks") {
    const { work } = plan;
    // A check does not read the target slot: what a cut-short apply left there is not known.
    const [upTo, held] = plan.exact ? ["", `, ${work.heldBytes} bytes already in place`] : ["up to ", ""];
    const tree = plan.tree ? `, its dm-verity tree (${plan.tree.bytes} bytes) computed here` : "";
    return `${upTo}${work.fetchBytes} bytes of the root in ${work.fetches.length} ranges, ${work.copies.length} chunks copied from the running slot${held}${tree} (the full root is ${full})`;
  }
  return `the full root, ${full} bytes (${plan.reason})`;
}

export interface RootWrite {
  timing: WriteSlotResult;
  /** staged: the slot already held it, verified again (io/update/staged.ts). */
  path: UpdatePlan["path"] | "staged";
  /** Bytes downloaded for it. */
  downloaded: number;
}

const stopped = (error: unknown) =>
  error instanceof EosError && (error.code === "INTERRUPTED" || error.code === "TIMEOUT");

/**
 * Writes and verifies the target slot the cheapest way the plan allows: a
 * delta that fails falls back to the chunk path when the server publishes a
 * chunk index (planned then, exactly: chunks the broken decode wrote count),
 * and the chunk path that fails, or is not there, to the full stream.
 */
export async function writeRootByPlan(
  o: PlanInputs & {
    say: (line: string) => void;
    plan: UpdatePlan;
    target: ByteRange;
    /** The target slot's name, for progress lines. */
    label: string;
    limits: TransferLimits;
    retryDelayMs?: number | undefined;
    /** Also sees the downloads' progress (the delta, or the full stream), e.g. to report it. */
    track?: ((inner: Progress, total: number) => Progress) | undefined;
  },
): Promise<RootWrite> {
  const log = (line: string) => o.ctx.stderr.write(`os-update: ${line}\n`);
  const bar = (label: string, total: number) =>
    progress(o.ctx.stderr, label, total, { interactive: o.ctx.interactive });
  const download = (label: string, total: number) =>
    o.track ? o.track(bar(label, total), total) : bar(label, total);
  const root = o.manifest.partitions.root;
  const running = o.layout.slots[o.layout.running]?.range;
  const common = {
    source: o.source,
    disk: o.layout.disk,
    target: o.target,
    size: root.size,
    sha256: root.sha256,
    limits: o.limits,
    signal: o.ctx.signal,
    proc: o.ctx.proc,
  };
  let plan = o.plan;
  if (plan.path === "delta" && running) {
    const { delta } = plan;
    o.say(`taking the delta from ${delta.from_version}: ${delta.size} bytes instead of ${streamBytes(root)}`);
    try {
      const timing = await writeSlotFromDelta({
        ...common,
        delta,
        running,
        verity: root.verity,
        // Only the delta's download is downloading; rebuilding the slot from it is local.
        progress: (label, total) =>
          label === DELTA_DOWNLOAD
            ? download(label, total)
            : bar(label === DELTA_DECODE ? `slot ${o.label} (${label})` : label, total),
        log,
      });
      return { timing, path: "delta", downloaded: delta.size };
    } catch (error) {
      if (stopped(error)) throw error;
      const chunks = await planChunksFor(o, true);
      const next = "path" in chunks ? "the chunk path" : `the full stream (${chunks.none})`;
      o.say(`the delta path failed (${errorMessage(error)}); taking ${next}`);
      if ("path" in chunks) plan = chunks;
    }
  }
  if (plan.path === "chunks" && running) {
    o.say(`taking the chunk path: ${describePlan(plan, root)}`);
    try {
      const timing = await writeSlotFromChunks({
        ...common,
        plan,
        running,
        progress: download(`slot ${o.label} (chunks)`, plan.work.fetchBytes),
        retryDelayMs: o.retryDelayMs,
        log,
        say: o.say,
      });
      const downloaded = plan.work.fetchBytes + plan.indexBytes + timing.treeFetched;
      return { timing, path: "chunks", downloaded };
    } catch (error) {
      if (stopped(error)) throw error;
      o.say(`the chunk path failed (${errorMessage(error)}); taking the full stream`);
    }
  } else if (plan.path === "full") {
    o.say(`full stream: ${plan.reason}`);
  }
  const timing = await writeSlot({
    ...common,
    range: o.target,
    dataBytes: streamBytes(root),
    kind: "root",
    progress: download(`slot ${o.label}`, streamBytes(root)),
    log,
    ...(o.retryDelayMs === undefined ? {} : { retryDelayMs: o.retryDelayMs }),
  });
  return { timing, path: "full", downloaded: streamBytes(root) };
}
