/**
 * registry-rw.service's sequence at every boot: find p.spare, grow it to
 * the disk's end (the original's registry_resize), set it up when blank
 * (first boot), activate it, and leave a one-line report in /run. A
 * registry that does not come up is reported and left as it is.
 */
import { existsSync } from "node:fs";
import { mkdir, open, readFile, realpath } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { EosError, errorMessage } from "../../core/errors.ts";
import { readGpt } from "../../core/gpt.ts";
import { encodeGpt } from "../../core/gpt-write.ts";
import {
  REGISTRY_BOOT_REPORT,
  REGISTRY_LABEL,
  checkRegistrySize,
  planGrow,
} from "../../core/registry/registry.ts";
import { sysPath, type Context } from "../context.ts";
import { openBlockSource } from "../files.ts";
import type { ProcessRunner } from "../process.ts";
import { isLuks, mustRun } from "./luks.ts";
import {
  activateRegistry,
  deviceBytes,
  deviceFsBytes,
  foundOn,
  setupRegistry,
  setupWasCutShort,
  type RegistryOptions,
} from "./registry.ts";
import { tpmMissingReason } from "./tpm.ts";

/** The disk holding a partition and the partition's number (from sysfs). */
async function parentDisk(partition: string): Promise<{ disk: string; number: number }> {
  const real = await realpath(partition);
  const name = basename(real);
  const sys = await realpath(`/sys/class/block/${name}`);
  const number = Number((await readFile(join(sys, "partition"), "utf8")).trim());
  if (!Number.isInteger(number) || number < 1)
    throw new EosError("REGISTRY", `${partition} is not a partition`);
  return { disk: `/dev/${basename(dirname(sys))}`, number };
}

/**
 * The original's registry_resize: the GPT's backup header to the end of a
 * grown disk and the last partition (p.spare) to the usable end; then the
 * kernel learns the new size (partx). Called before the registry is opened,
 * so dm-crypt maps the whole partition and only XFS needs to grow.
 */
export async function growPartition(
  proc: ProcessRunner,
  partition: string,
  log: (l: string) => void,
): Promise<number | undefined> {
  const { disk, number } = await parentDisk(partition);
  const src = await openBlockSource(disk, "r+");
  let plan;
  try {
    const { table, problems } = await readGpt(src);
    const backupAtEnd = !problems.some((p) => p.startsWith("backup:"));
    plan = planGrow(table, src.size, backupAtEnd);
    if (!plan) return undefined;
    if (plan.partitionNumber !== number) {
      throw new EosError(
        "REGISTRY",
        `${partition} is partition ${number}, but the last partition of ${disk} is ${plan.partitionNumber}`,
      );
    }
    for (const w of encodeGpt(plan.table, src.size))
      await src.handle.write(w.data, 0, w.data.length, w.offset);
    await src.handle.sync();
  } finally {
    await src.close();
  }
  await mustRun(proc, ["partx", "--update", "--nr", String(number), disk], {
    what: `partx --update ${disk}`,
  });
  const mib = (n: number) => `${Math.round(n / 1024 / 1024)} MiB`;
  log(
    plan.headerOnly
      ? `${disk}: GPT backup header moved to the disk end`
      : `${partition}: grown from ${mib(plan.oldBytes)} to ${mib(plan.newBytes)} (disk ${disk})`,
  );
  return plan.headerOnly ? undefined : plan.newBytes;
}

export interface BootOutcome {
  /** 0: registry active, or nothing to do (no p.spare, no room, no key provider); 1: an existing registry did not come up. */
  code: number;
  report: string;
}

/**
 * registry-rw.service: find p.spare, grow it, set it up when blank (first
 * boot), activate it. A registry that fails to open or mount is reported
 * and left as it is; the device boots without it.
 */
export async function bootRegistry(
  ctx: Context,
  o: RegistryOptions & { waitMs?: number },
): Promise<BootOutcome> {
  const dev = sysPath(ctx, `/dev/disk/by-partlabel/${REGISTRY_LABEL}`);
  const deadline = Date.now() + (o.waitMs ?? 30_000);
  while (!existsSync(dev) && Date.now() < deadline) await sleep(250);
  if (!existsSync(dev))
    return { code: 0, report: `no ${REGISTRY_LABEL} partition: running without a registry` };
  try {
    if ((await growPartition(o.proc, dev, o.log)) !== undefined) {
      // partx makes the kernel drop and re-add the partition: wait until udev has put
      // /dev/disk/by-partlabel back before anything opens it (slow under emulation).
      await mustRun(o.proc, ["udevadm", "settle", "--timeout=120"], { what: "udevadm settle" }).catch(
        () => undefined,
      );
      const back = Date.now() + 120_000;
      while (!existsSync(dev) && Date.now() < back) await sleep(250);
    }
  } catch (error) {
    o.log(`cannot grow ${dev}: ${errorMessage(error)} (continuing at its present size)`);
  }
  // TPM devices appear with udev; give the driver a moment when sysfs says there is one.
  if (!o.tpm?.tcti && existsSync("/sys/class/tpm/tpm0")) {
    for (let i = 0; i < 20 && !existsSync("/dev/tpmrm0"); i++) await sleep(250);
  }
  const found = await foundOn(o.proc, dev);
  // A first boot cut short between luksFormat and the file system left a header that was
  // never mounted: nothing of the user's is on it, so the set-up starts over.
  const cutShort = found !== undefined && (await setupWasCutShort(o.proc, dev));
  if (cutShort) o.log(`${dev}: its set-up was cut short (${found}, never mounted): setting it up again`);
  if (!found || cutShort) {
    const bytes = await deviceBytes(dev);
    try {
      checkRegistrySize(dev, bytes);
    } catch (error) {
      return { code: 0, report: `registry not set up: ${errorMessage(error)}` };
    }
    const keyed = o.keyFile || o.provider === "keyfile" || !tpmMissingReason(o.tpm);
    if (!keyed) {
      return {
        code: 0,
        report: `registry not set up: ${tpmMissingReason(o.tpm)} and no key file configured (flake-registry --boot --key-file FILE)`,
      };
    }
    o.log(`${dev} is blank: first boot, setting up the registry`);
    await setupRegistry(dev, { ...o, force: cutShort });
  } else if (!(await isLuks(o.proc, dev))) {
    return {
      code: 1,
      report: `${dev} holds ${found}, not a registry: left untouched, running without a registry`,
    };
  }
  try {
    const r = await activateRegistry(dev, { ...o, growFs: true });
    const size = await deviceFsBytes(r.mountPoint);
    return {
      code: 0,
      report: `registry ${dev} active on ${r.mountPoint} (${Math.round(size / 1024 / 1024)} MiB${r.grownBytes ? `, grown by ${Math.round(r.grownBytes / 1024 / 1024)} MiB` : ""}, key: ${r.provider})`,
    };
  } catch (error) {
    const hint = error instanceof EosError && error.hint ? ` (${error.hint})` : "";
    return {
      code: 1,
      report: `registry ${dev} not activated: ${errorMessage(error)}${hint}; data left untouched, running without a registry`,
    };
  }
}

export async function writeBootReport(ctx: Context, report: string): Promise<void> {
  const path = sysPath(ctx, REGISTRY_BOOT_REPORT);
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const fh = await open(path, "w", 0o644);
  try {
    await fh.writeFile(`${report}\n`);
  } finally {
    await fh.close();
  }
}
