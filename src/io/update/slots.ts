/**
 * Finds the A/B slots of a disk by label and which one is running: from the
 * kernel's root=PARTUUID= on a live system, or the default slot of the boot
 * control block for a disk that is not running (--root-device).
 */
import { realpath } from "node:fs/promises";
import { basename } from "node:path";
import { SLOT_LABEL, type KernelCommandLine, type Slot } from "../../core/update/bootctl.ts";
import { EosError } from "../../core/errors.ts";
import {
  readGpt,
  findPartition,
  partitionRange,
  type ByteRange,
  type GptPartition,
  type GptTable,
} from "../../core/gpt.ts";
import { sysPath, type Context } from "../context.ts";
import { openBlockSource } from "../files.ts";

export interface SlotInfo {
  slot: Slot;
  partition: GptPartition;
  range: ByteRange;
}

export interface SlotLayout {
  disk: string;
  table: GptTable;
  slots: Partial<Record<Slot, SlotInfo>>;
  running: Slot;
  online: boolean;
}

async function diskOfPartition(ctx: Context, partuuid: string): Promise<string> {
  const link = sysPath(ctx, `/dev/disk/by-partuuid/${partuuid.toLowerCase()}`);
  let device: string;
  try {
    device = await realpath(link);
  } catch {
    throw new EosError("SLOT", `the running root PARTUUID=${partuuid} has no device (${link})`, {
      hint: "pass --root-device DISK to act on a disk that is not the running system",
    });
  }
  try {
    const { stdout } = await ctx.proc.run(["lsblk", "-ndo", "PKNAME", device]);
    const parent = stdout.trim();
    if (!parent) throw new Error("no parent disk");
    return `/dev/${basename(parent)}`;
  } catch (error) {
    throw new EosError("SLOT", `cannot find the disk that holds ${device}: ${(error as Error).message}`);
  }
}

export async function locateSlots(
  ctx: Context,
  options: { rootDevice: string | undefined; cmdline: KernelCommandLine; bootDefault: () => Promise<Slot> },
): Promise<SlotLayout> {
  const online = options.rootDevice === undefined;
  let disk: string;
  if (options.rootDevice !== undefined) disk = options.rootDevice;
  else {
    if (!options.cmdline.rootPartuuid) {
      throw new EosError(
        "SLOT",
        "the kernel command line has no root=PARTUUID=: cannot tell which slot is running",
        {
          hint: "pass --root-device DISK to act on a disk that is not the running system",
        },
      );
    }
    disk = await diskOfPartition(ctx, options.cmdline.rootPartuuid);
  }
  const source = await openBlockSource(disk);
  let table: GptTable;
  try {
    table = (await readGpt(source)).table;
  } finally {
    await source.close();
  }
  const slots: Partial<Record<Slot, SlotInfo>> = {};
  for (const slot of ["A", "B"] as const) {
    const partition = findPartition(table, SLOT_LABEL[slot]);
    if (partition) slots[slot] = { slot, partition, range: partitionRange(table, partition) };
  }
  if (!slots.A) throw new EosError("SLOT", `${disk} has no partition labelled ${SLOT_LABEL.A}`);
  let running: Slot;
  if (online) {
    const uuid = options.cmdline.rootPartuuid as string;
    const match = (["A", "B"] as const).find((s) => slots[s]?.partition.uniqueGuid === uuid);
    if (!match) {
      throw new EosError(
        "SLOT",
        `the running root PARTUUID=${uuid} is neither ${SLOT_LABEL.A} nor ${SLOT_LABEL.B} on ${disk}`,
      );
    }
    running = match;
  } else {
    running = await options.bootDefault();
  }
  return { disk, table, slots, running, online };
}
