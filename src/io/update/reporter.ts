/**
 * A device's reports to its update server (POST /v1/events with its token;
 * while update.url is down, to a replica in update.mirrors: post-json.ts).
 * An event is first put in a small bounded queue file, then sent: a server
 * that is down, slow or refusing costs the update nothing but a bounded wait,
 * and what could not be sent goes out with a later run. The queue lives on
 * the flake registry when it is active (it survives a reboot, a kexec and a
 * fallback), else in /run. An event never waits long for another process's
 * turn on the queue, and never vanishes: it is spilled beside the queue, or
 * at worst counted as dropped, and the server is told
 * (core/fleet/report-queue.ts). Over SSH there is no endpoint to report to:
 * reporting is off, and os-update says so once per boot.
 */
import { randomBytes } from "node:crypto";
import { appendFile, mkdir, readdir, readFile, stat, unlink, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { parseKernelCommandLine, readBootState, type Slot } from "../../core/update/bootctl.ts";
import { EosError } from "../../core/errors.ts";
import { STATE_BATCH_HEADER, type DeviceEvent, type DeviceFacts } from "../../core/fleet/events.ts";
import {
  absorbSpill,
  appendEvent,
  applyReceipt,
  applyReceipts,
  outgoing,
  parseReceipt,
  stateOnly,
  parseReportQueue,
  retryAfterAt,
  SPILL_MAX,
  undelivered,
  type Batch,
  type NamedReceipt,
  type ReportQueue,
  type SendReceipt,
} from "../../core/fleet/report-queue.ts";
import { sysPath, type Context } from "../context.ts";
import { deviceStatePath } from "./state-path.ts";
import { atomicWriteFile } from "../files.ts";
import { withLock } from "../lock.ts";
import { readBootControl } from "./boot-control.ts";
import { loadSetupWith, type DeviceSetup, type SshTransport } from "./device-config.ts";
import { deviceIdentity } from "./device-identity.ts";
import { deviceToken } from "./enrolment.ts";
import { replicatedPost } from "./post-json.ts";
import { planBytes, type UpdatePlan } from "./root-write.ts";
import { streamBytes, type Manifest } from "../../core/manifest.ts";

type Distribute<T> = T extends DeviceEvent ? Omit<T, "id" | "time"> : never;
/** An event as the updater says it; the reporter adds its id and time. */
export type NewEvent = Distribute<DeviceEvent>;

export interface UpdateEvents {
  /**
   * Queues an event, and sends the queue at once after the steps that a
   * reboot or kexec may follow (SEND_AT_ONCE). Never throws: reporting must
   * not fail an update.
   */
  note(event: NewEvent): Promise<void>;
  /** Sends what is queued within a bounded time. Never throws. */
  flush(): Promise<void>;
}

/** The whole send (connect, upload, answer) of one flush to one server (update.url or a mirror). */
export const SEND_TIMEOUT_MS = 5000;
const QUEUE_FILE = "eos/reports.json";
/** This process may not live to send them later: the system reboots or kexecs next. */
const SEND_AT_ONCE: ReadonlySet<DeviceEvent["type"]> = new Set(["kexec", "committed", "rolled_back"]);

export const reportingOff: UpdateEvents = { note: async () => undefined, flush: async () => undefined };

const queuePath = (ctx: Context) => deviceStatePath(ctx, QUEUE_FILE);
/** Events that could not wait for the queue's lock, one file each (see core/fleet/report-queue.ts). */
const spillDir = (path: string) => `${path}.spill`;
/** One byte per event that found the spill full as well. */
const lostPath = (path: string) => `${path}.lost`;
/** What sends delivered while they could not get the lock to say so in the queue, one file each. */
const receiptDir = (path: string) => `${path}.sent`;

const readQueue = async (path: string): Promise<ReportQueue> =>
  parseReportQueue(await readFile(path, "utf8").catch(() => ""));

interface Spill {
  /** The spill's files, oldest first. */
  files: string[];
  events: DeviceEvent[];
  /** The file each event is in. */
  eventFiles: string[];
  /** Files that are there but hold no event: counted as dropped when they are removed. */
  damaged: number;
}

/** A spill's or receipts' complete files, oldest first (a writer's temp file starts with a dot). */
async function filesIn(dir: string): Promise<string[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  return names
    .filter((n) => /^[0-9a-z].*\.json$/.test(n))
    .sort()
    .map((n) => join(dir, n));
}
const spillFiles = (path: string) => filesIn(spillDir(path));

type FileReceipt = NamedReceipt & { file: string };

async function readReceipts(path: string): Promise<FileReceipt[]> {
  const receipts: FileReceipt[] = [];
  for (const file of await filesIn(receiptDir(path))) {
    const text = await readFile(file, "utf8").catch(() => undefined);
    // Gone: a writer applied it (the queue names it in `applied`). Damaged: removed, its events go again.
    if (text !== undefined) receipts.push({ name: basename(file), file, receipt: parseReceipt(text) });
  }
  return receipts;
}

/** Leaves what a send delivered beside the queue, for the next writer that gets the lock. */
async function writeReceipt(path: string, receipt: SendReceipt): Promise<void> {
  await mkdir(receiptDir(path), { recursive: true, mode: 0o700 });
  const name = `${Date.now().toString(36).padStart(10, "0")}-${process.pid}-${randomBytes(6).toString("hex")}.json`;
  await atomicWriteFile(join(receiptDir(path), name), JSON.stringify(receipt), 0o600);
}

async function readSpill(path: string): Promise<Spill> {
  const spill: Spill = { files: [], events: [], eventFiles: [], damaged: 0 };
  for (const file of await spillFiles(path)) {
    spill.files.push(file);
    try {
      spill.events.push(JSON.parse(await readFile(file, "utf8")) as DeviceEvent);
      spill.eventFiles.push(file);
    } catch (error) {
      // Gone: another process merged it. Damaged: removed with the rest, and counted.
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") spill.damaged++;
    }
  }
  return spill;
}

const lostBytes = async (path: string) => (await stat(lostPath(path)).catch(() => undefined))?.size ?? 0;

let spilled = 0;

/**
 * Keeps an event without the queue's lock: in a file of its own, named so
 * that a process's events sort in the order it noted them, or, when the
 * spill is full, as one more byte of the lost count (O_APPEND: writers do
 * not overwrite each other's bytes).
 */
async function spill(path: string, event: DeviceEvent): Promise<void> {
  const dir = spillDir(path);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  if ((await spillFiles(path)).length >= SPILL_MAX) {
    await appendFile(lostPath(path), "x", { mode: 0o600 });
    return;
  }
  const order = `${Date.now().toString(36).padStart(10, "0")}-${process.pid}-${String(spilled++).padStart(8, "0")}`;
  await atomicWriteFile(join(dir, `${order}-${event.id}.json`), JSON.stringify(event), 0o600);
}

/**
 * How long a writer waits for another process's turn on the queue (a few ms
 * each): past it the event is spilled, so an update never waits longer.
 */
const QUEUE_LOCK_WAIT_MS = 2000;
/** The wait once a wait has run out in this process: the holder is stuck, and every event would pay it again. */
const QUEUE_LOCK_STUCK_MS = 100;
let lockWait = QUEUE_LOCK_WAIT_MS;
/** How long a writer leaves the queue's lock alone after its edit (longer than a waiter's retry pause). */
const QUEUE_TURN_MS = 15;
/** This process's edits, one after the other (the lock file tells processes apart, not calls). */
let editing: Promise<unknown> = Promise.resolve();

/**
 * Reads, changes and rewrites the queue as one step, taking in what was
 * spilled beside it and the receipts of sends: the boot unit's report and a
 * manual os-update may both be writing, and neither may lose the other's
 * events. With `orSpill`, an event that cannot get the lock in time is
 * spilled instead of failing. `delivered` (a send's receipt) goes before
 * the spill is taken in, so that delivered events never fill the queue.
 */
function editQueue(
  path: string,
  change: (q: ReportQueue) => ReportQueue,
  o: { orSpill?: DeviceEvent; delivered?: SendReceipt } = {},
): Promise<void> {
  const run = async () => {
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
    try {
      await withLock(`${path}.lock`, "another os-update's report", lockWait, async () => {
        const receipts = await readReceipts(path);
        const taken = await readSpill(path);
        let q = applyReceipts(await readQueue(path), receipts);
        if (o.delivered) q = applyReceipt(q, o.delivered);
        const known = o.delivered ? [...receipts, { name: "", receipt: o.delivered }] : receipts;
        q = absorbSpill(q, { ...taken, events: undelivered(taken.events, known) }, await lostBytes(path));
        const next = change(q);
        // The first write of a queue (or of one that was damaged, or from before totals) gives it its id.
        const id = next.id ?? randomBytes(12).toString("base64url");
        await atomicWriteFile(path, JSON.stringify({ ...next, id }), 0o600);
        // After the queue holds them: a crash in between leaves copies, which the queue skips (same id,
        // a receipt named in `applied`) or the server stores once.
        for (const file of [...taken.files, ...receipts.map((r) => r.file)])
          await unlink(file).catch(() => undefined);
      });
    } catch (error) {
      if (!(error instanceof EosError && error.code === "LOCKED")) throw error;
      lockWait = QUEUE_LOCK_STUCK_MS;
      if (!o.orSpill) throw error;
      await spill(path, o.orSpill);
      return;
    }
    lockWait = QUEUE_LOCK_WAIT_MS;
    // A turn for the other process: one that notes a burst of events would otherwise take the
    // lock again at once after each, and a waiter polling for it could wait out its whole limit.
    await new Promise((resolve) => setTimeout(resolve, QUEUE_TURN_MS));
  };
  const next = editing.then(run, run);
  editing = next.catch(() => undefined);
  return next;
}

export interface ReporterOptions {
  ctx: Context;
  config?: string | undefined;
  transport?: SshTransport | undefined;
  esp: string;
  online: boolean;
  /** Where to say that reporting is off (stderr). */
  warn(line: string): void;
}

/** What the device says about itself with a batch: read when it is sent, so it is current. */
async function deviceFacts(o: ReporterOptions, setup: DeviceSetup, registry: boolean): Promise<DeviceFacts> {
  const vars = await readBootControl(o.esp).catch(() => undefined);
  const identity = await deviceIdentity(o.ctx, {
    online: o.online,
    bootVars: vars,
    configuredName: setup.config.update.name,
  });
  const facts: DeviceFacts = {
    image: identity.image,
    architecture: identity.architecture,
    registry: registry ? "active" : "none",
  };
  if (vars) {
    const state = readBootState(vars);
    const cmdline = await readFile(sysPath(o.ctx, "/proc/cmdline"), "utf8").catch(() => "");
    const running: Slot = parseKernelCommandLine(cmdline).slot ?? state.defaultSlot;
    facts.running = running;
    facts.slots = { A: state.slots.A.version ?? null, B: state.slots.B.version ?? null };
  }
  return facts;
}

/** The reporter for this os-update run, or one that does nothing (no config, SSH transport). */
export async function openReporter(o: ReporterOptions): Promise<UpdateEvents> {
  let setup: DeviceSetup;
  try {
    setup = await loadSetupWith(o.ctx, o.config, o.transport);
  } catch {
    return reportingOff; // no configuration: the command itself will say what is wrong, if it needs one
  }
  const u = setup.config.update;
  if (!u.url) {
    await sayOffOncePerBoot(o);
    return reportingOff;
  }
  // Replicas share the database: a report any of them takes is the fleet's (update.mirrors).
  const post = replicatedPost(
    [u.url, ...(u.mirrors ?? [])].map((s) => new URL(`${s.replace(/\/+$/, "")}/v1/events`)),
  );
  const path = await queuePath(o.ctx);
  const registry = !path.startsWith(sysPath(o.ctx, "/run"));
  const reporter: UpdateEvents = {
    async note(event) {
      try {
        const id = `${Date.now().toString(36)}-${randomBytes(6).toString("base64url")}`;
        const full = { ...event, id, time: o.ctx.now().toISOString() } as DeviceEvent;
        await editQueue(path, (q) => appendEvent(q, full), { orSpill: full });
      } catch {
        // a full or read-only disk loses this report, never the update
      }
      if (SEND_AT_ONCE.has(event.type)) await reporter.flush();
    },
    async flush() {
      try {
        // What another process spilled goes out too, even while its lock is still held. Receipts first:
        // one applied and removed after they are listed is named in the queue read after.
        const receipts = await readReceipts(path);
        const taken = await readSpill(path);
        const q = applyReceipts(await readQueue(path), receipts);
        const full = outgoing(q, undelivered(taken.events, receipts), await lostBytes(path));
        // The server said when (a 429): a device that asks again sooner only spends its allowance. Not
        // for what rollouts judge waves on (committed, fell_back…): the server admits those beyond it.
        const held = q.retryAt !== undefined && o.ctx.now().getTime() < q.retryAt;
        let batch: Batch | undefined = held ? stateOnly(full) : full;
        if (batch === undefined || batch.events.length === 0) return;
        const token = await deviceToken(o.ctx, setup, o.warn);
        if (token === undefined) return;
        const ca = u.ca ? await readFile(u.ca) : undefined;
        const device = await deviceFacts(o, setup, registry);
        const send = (b: Batch) =>
          post(
            token,
            JSON.stringify({ device, events: b.events, ...(b.drops ? { drops: b.drops } : {}) }),
            ca,
            SEND_TIMEOUT_MS,
            b.events.length === stateOnly(b)?.events.length ? { [STATE_BATCH_HEADER]: "state" } : {},
          );
        const answer = await send(batch);
        let status = answer.status;
        if (status === 429) {
          const at = retryAfterAt(answer.retryAfter, o.ctx.now().getTime());
          if (at !== undefined)
            await editQueue(path, (now) => ({ ...now, retryAt: at })).catch(() => undefined);
          // Refused with progress in it: the state events go on their own now, the rest after the wait.
          const urgent = stateOnly(batch);
          if (urgent === undefined || urgent.events.length === batch.events.length) return;
          batch = urgent;
          ({ status } = await send(batch));
        }
        // Kept for later: every replica is down or overloaded, or the servers do not (yet) know this token.
        if (status >= 500 || status === 401 || status === 403 || status === 429 || status === 408) return;
        // Sent (200), or refused for good (another 4xx: resending the same bytes cannot help). The wait
        // the server asked for is over once a whole batch went, not just its state events.
        const whole = batch === full;
        const receipt = batch.receipt;
        try {
          await editQueue(path, (now) => (whole ? { ...now, retryAt: undefined } : now), {
            delivered: receipt,
          });
        } catch {
          // The lock is still held: the receipt tells its holder's successor what went, so that it is
          // neither sent nor counted as dropped again. The spilled events that went are removed now.
          await writeReceipt(path, receipt);
          const sent = new Set(receipt.ids);
          for (const [i, e] of taken.events.entries())
            if (sent.has(e.id)) await unlink(taken.eventFiles[i] as string).catch(() => undefined);
        }
      } catch {
        // unreachable, timed out, no token: the queue keeps the events for the next run
      }
    },
  };
  return reporter;
}

/** The download_started event of an apply: the path (delta or full) and the bytes it will download. */
export function downloadStarted(manifest: Manifest, plan: UpdatePlan | undefined): NewEvent {
  const bytes = plan ? planBytes(plan, manifest) : streamBytes(manifest.partitions.root);
  return { type: "download_started", version: manifest.version, path: plan?.path ?? "full", bytes };
}

async function sayOffOncePerBoot(o: ReporterOptions): Promise<void> {
  const marker = sysPath(o.ctx, "/run/eos/reporting-off");
  if (await stat(marker).catch(() => undefined)) return;
  o.warn("os-update: reporting to the update server is off over SSH (it needs update.url, HTTPS)");
  await mkdir(join(marker, ".."), { recursive: true }).catch(() => undefined);
  await writeFile(marker, "").catch(() => undefined);
}
