/**
 * What a device reports to its update server, and what the server makes of
 * it. One schema serves both ends: the device builds events of these types,
 * the server validates every batch against it before anything is stored, so
 * a malformed or hostile body is refused with the field at fault named.
 */
import { z } from "zod";

/** A batch holds at most this many events: a device's queue is smaller still. */
export const MAX_EVENTS_PER_BATCH = 100;
/** Bytes of a POST /v1/events body; more is refused (413) before parsing. */
export const MAX_EVENTS_BODY_BYTES = 128 * 1024;

const version = z.string().min(1).max(64);
const slot = z.enum(["A", "B"]);
const sha256 = z.string().regex(/^[0-9a-f]{64}$/, "must be 64 lowercase hex digits");
const bytes = z
  .number()
  .int()
  .min(0)
  .max(2 ** 53 - 1);

/** Fields every event has: an id the device made (a re-sent event is stored once) and when it happened. */
const base = {
  id: z.string().regex(/^[A-Za-z0-9_-]{8,64}$/, "must be 8-64 letters, digits, _ or -"),
  time: z.iso.datetime({ offset: true }),
};

export const deviceEventSchema = z.discriminatedUnion("type", [
  z.strictObject({
    ...base,
    type: z.literal("checked"),
    version: version.nullable(),
    slot,
    sha256,
    offered: version.optional(),
    available: z.boolean(),
  }),
  z.strictObject({
    ...base,
    type: z.literal("download_started"),
    version,
    path: z.enum(["delta", "chunks", "full"]),
    bytes,
  }),
  z.strictObject({ ...base, type: z.literal("download_progress"), version, bytes, total: bytes }),
  z.strictObject({ ...base, type: z.literal("written"), version, slot, sha256 }),
  z.strictObject({ ...base, type: z.literal("kexec"), version, slot }),
  z.strictObject({ ...base, type: z.literal("committed"), version: version.nullable(), slot }),
  /** The trial slot did not commit within its tries and GRUB booted the other one again. */
  z.strictObject({ ...base, type: z.literal("fell_back"), version: version.nullable(), slot }),
  z.strictObject({ ...base, type: z.literal("rolled_back"), version: version.nullable(), slot }),
  z.strictObject({
    ...base,
    type: z.literal("failed"),
    stage: z.enum(["check", "apply", "commit", "rollback"]),
    code: z.string().regex(/^[A-Z_]{2,32}$/, "must be an error code such as NETWORK"),
    message: z.string().max(1000),
  }),
]);

export type DeviceEvent = z.infer<typeof deviceEventSchema>;
export type DeviceEventType = DeviceEvent["type"];
export const EVENT_TYPES: readonly DeviceEventType[] = [
  "checked",
  "download_started",
  "download_progress",
  "written",
  "kexec",
  "committed",
  "fell_back",
  "rolled_back",
  "failed",
];

/**
 * The events that change what a device is, or say that a change failed:
 * rollouts judge waves on them, so they must not wait behind a rate limit.
 * The others (checks, download progress) are most of the traffic and can.
 */
export const STATE_EVENTS: ReadonlySet<DeviceEventType> = new Set([
  "written",
  "kexec",
  "committed",
  "fell_back",
  "rolled_back",
  "failed",
]);
/**
 * The header (value "state") of a batch that holds state events only: a
 * device over its report limit may still send it, and the server can refuse
 * any other batch before reading its body.
 */
export const STATE_BATCH_HEADER = "x-eos-events";

/** What the device says about itself with each batch (it may change between batches). */
export const deviceFactsSchema = z.strictObject({
  image: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/, "must be an image name"),
  architecture: z.string().regex(/^[a-z0-9_]{1,32}$/, "must be an architecture such as x86_64"),
  /** The slots' versions as the boot control block records them. */
  slots: z.strictObject({ A: version.nullable(), B: version.nullable() }).optional(),
  running: slot.optional(),
  registry: z.enum(["active", "none"]).optional(),
});
export type DeviceFacts = z.infer<typeof deviceFactsSchema>;

/** The largest drop total a batch may carry (a device sends no more); the devices' column is 32-bit. */
export const MAX_DROPS_TOTAL = 1_000_000_000;

/** Events the device's queue `queue` (its random id) has dropped since it was made: a total, not a delta. */
export const dropsSchema = z.strictObject({
  queue: z.string().regex(/^[A-Za-z0-9_-]{8,64}$/, "must be a queue id"),
  total: z.number().int().min(0).max(MAX_DROPS_TOTAL),
});
export type Drops = z.infer<typeof dropsSchema>;

export const eventBatchSchema = z.strictObject({
  device: deviceFactsSchema,
  events: z.array(deviceEventSchema).min(1).max(MAX_EVENTS_PER_BATCH),
  /** Events the device's queue had to drop, as a total per queue: a re-sent total adds nothing. */
  drops: dropsSchema.optional(),
  /** Drops not yet reported, from a device before totals: added as they come. */
  dropped: z.number().int().min(0).max(1_000_000).optional(),
});
export type EventBatch = z.infer<typeof eventBatchSchema>;

/**
 * What a batch adds to its device's drop count, given the total the server
 * last took from the same queue (undefined: a queue it has not seen, whose
 * whole total is new). A total sent twice, or overtaken by a later one that
 * arrived first, adds nothing.
 */
export function dropsAdded(batch: Pick<EventBatch, "drops" | "dropped">, seen: number | undefined): number {
  const fromTotal = batch.drops ? Math.max(0, batch.drops.total - (seen ?? 0)) : 0;
  return fromTotal + (batch.dropped ?? 0);
}

/** A device's state as the inventory shows it: what its last update event says it is doing. */
export type DeviceState =
  | "unknown"
  | "current"
  | "update-available"
  | "downloading"
  | "written"
  | "rebooting"
  | "committed"
  | "fell-back"
  | "rolled-back"
  | "failed";

export const DEVICE_STATES: readonly DeviceState[] = [
  "unknown",
  "current",
  "update-available",
  "downloading",
  "written",
  "rebooting",
  "committed",
  "fell-back",
  "rolled-back",
  "failed",
];

export function stateAfter(event: DeviceEvent): DeviceState {
  switch (event.type) {
    case "checked":
      return event.available ? "update-available" : "current";
    case "download_started":
    case "download_progress":
      return "downloading";
    case "written":
      return "written";
    case "kexec":
      return "rebooting";
    case "committed":
      return "committed";
    case "fell_back":
      return "fell-back";
    case "rolled_back":
      return "rolled-back";
    case "failed":
      return "failed";
  }
}

/** The inventory fields that events and facts set (the rest: id, tags, first/last seen). */
export interface DeviceInventory {
  image: string | null;
  architecture: string | null;
  running_slot: string | null;
  running_version: string | null;
  other_version: string | null;
  root_sha256: string | null;
  registry: string | null;
  state: DeviceState;
  last_event: string | null;
  last_event_at: string | null;
}

export const EMPTY_INVENTORY: DeviceInventory = {
  image: null,
  architecture: null,
  running_slot: null,
  running_version: null,
  other_version: null,
  root_sha256: null,
  registry: null,
  state: "unknown",
  last_event: null,
  last_event_at: null,
};

const other = (s: "A" | "B"): "A" | "B" => (s === "A" ? "B" : "A");

/**
 * The inventory after a batch: the events in the order they happened, then
 * the facts (read when the batch was sent, after every event in it). Events
 * older than the last one recorded (a queue sent late) go into the history
 * but do not move the state backwards.
 */
export function applyBatch(before: DeviceInventory, batch: EventBatch): DeviceInventory {
  const inv: DeviceInventory = { ...before };
  const ordered = [...batch.events].sort((a, b) => Date.parse(a.time) - Date.parse(b.time));
  for (const e of ordered) {
    if (inv.last_event_at !== null && Date.parse(e.time) < Date.parse(inv.last_event_at)) continue;
    inv.last_event = e.type;
    inv.last_event_at = new Date(Date.parse(e.time)).toISOString();
    inv.state = stateAfter(e);
    if (e.type === "checked") {
      inv.running_slot = e.slot;
      inv.running_version = e.version;
      inv.root_sha256 = e.sha256;
    } else if (e.type === "written") {
      inv.other_version = e.version;
    } else if (e.type === "committed") {
      inv.running_slot = e.slot;
      inv.running_version = e.version;
    }
  }
  const f = batch.device;
  inv.image = f.image;
  inv.architecture = f.architecture;
  if (f.registry) inv.registry = f.registry;
  if (f.running) {
    inv.running_slot = f.running;
    if (f.slots) {
      inv.running_version = f.slots[f.running];
      inv.other_version = f.slots[other(f.running)];
    }
  }
  return inv;
}

/** The first issue of a failed parse as `path: message`, for a 400 that names the field. */
export function describeIssue(error: z.ZodError): string {
  const issue = error.issues[0];
  if (!issue) return "invalid";
  const path = issue.path.reduce<string>(
    (acc, part) =>
      typeof part === "number" ? `${acc}[${part}]` : acc ? `${acc}.${String(part)}` : String(part),
    "",
  );
  if (issue.code === "unrecognized_keys")
    return `${path ? `${path}: ` : ""}unknown key ${issue.keys.join(", ")}`;
  return `${path || "(body)"}: ${issue.message}`;
}
