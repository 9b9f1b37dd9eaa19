/**
 * /etc/os-update.yml in the original shapes: on an update server `update:` is
 * a list of images to fetch; on a device it is a map naming the server. Keys
 * beyond the original ones are additive and optional.
 */
import { z } from "zod";
import { EosError } from "./errors.ts";
import { isSafeImageName } from "./image-name.ts";
import { parseYamlData } from "./yaml-input.ts";
import { MAX_TAGS, TAG } from "./fleet/admin.ts";
import { parseWindow } from "./fleet/window.ts";

const imageName = z
  .string()
  .refine(isSafeImageName, "must be letters, digits and . _ + - (no /, no ..), at most 128 characters");

export function parseDuration(text: string | number): number {
  if (typeof text === "number") {
    if (!Number.isFinite(text) || text <= 0) throw new Error("must be a positive number of seconds");
    return text;
  }
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?$/.exec(text.trim());
  if (!m) throw new Error(`cannot read ${JSON.stringify(text)} as a duration (e.g. 90s, 15m, 1h, 1d)`);
  const value = Number(m[1]);
  const unit = m[2] ?? "s";
  const factor = { ms: 0.001, s: 1, m: 60, min: 60, h: 3600, d: 86400 }[unit] ?? 1;
  const seconds = value * factor;
  if (seconds <= 0) throw new Error("must be longer than zero");
  return seconds;
}

const duration = z.union([z.string(), z.number()]).transform((value, ctx) => {
  try {
    return parseDuration(value);
  } catch (error) {
    ctx.addIssue({ code: "custom", message: (error as Error).message });
    return z.NEVER;
  }
});

const httpUrl = z
  .string()
  .refine((u) => /^(https?|file):\/\//.test(u), "must be an http://, https:// or file:// URL");

/** Bytes that must arrive within a stall window (`stall`) for a transfer not to count as stalled. */
const stallBytes = z
  .number()
  .int()
  .min(1)
  .max(1 << 30)
  .optional();

const serverImageSchema = z.strictObject({
  image: httpUrl,
  /** The original names the local file (`EOS.aarch64-RPI-TW.raw`); `.raw` is optional here. */
  name: z
    .string()
    .transform((n) => n.replace(/\.raw$/, ""))
    .pipe(imageName),
  manifest: httpUrl.optional(),
  signature: httpUrl.optional(),
  interval: duration.optional(),
  insecure: z.boolean().optional(),
  /** Deltas to a new version from this many older ones (kept for it; default 3, 0: none). */
  delta_from: z.number().int().min(0).max(16).optional(),
  /**
   * Published versions kept (default and minimum: delta_from + 1, at least 2); an older one
   * stays while a device runs it, a rollout names it or a device is pinned to it.
   */
  keep: z.number().int().min(1).max(1000).optional(),
});

/** One maintenance window spec (core/fleet/window.ts), refused with the parser's message. */
export const windowSpecSchema = z.string().superRefine((spec, ctx) => {
  try {
    parseWindow(spec);
  } catch (error) {
    ctx.addIssue({ code: "custom", message: (error as Error).message });
  }
});

/** At most this many groups: each check runs through them. */
export const MAX_WINDOW_GROUPS = 100;

/** Maintenance windows per device group, as the config and the admin API (PUT /v1/admin/windows) take them. */
export const windowGroupsSchema = z
  .array(
    z.strictObject({
      tags: z.array(z.string().regex(TAG, "must be a tag")).max(MAX_TAGS).default([]),
      window: windowSpecSchema,
    }),
  )
  .max(MAX_WINDOW_GROUPS);

export type WindowGroups = z.infer<typeof windowGroupsSchema>;

/** A token bucket: `burst` requests at once, `per_minute` earned back a minute. */
const bucket = z.strictObject({
  burst: z.number().int().min(1).max(100_000).optional(),
  per_minute: z.number().positive().max(1_000_000).optional(),
});

export const serverConfigSchema = z.strictObject({
  update: z.array(serverImageSchema),
  images_dir: z.string().startsWith("/", "must be an absolute path").optional(),
  /**
   * Published images in an S3 bucket instead of images_dir (which then holds
   * only fetch's staging and lock files): s3://BUCKET/PREFIX.
   */
  storage: z.string().startsWith("s3://", "must be an s3://BUCKET/PREFIX URL").optional(),
  /** The S3 endpoint and addressing; credentials come from the AWS environment (AWS_ACCESS_KEY_ID, …). */
  s3: z
    .strictObject({
      endpoint: z.url({ protocol: /^https?$/ }).optional(),
      region: z
        .string()
        .regex(/^[a-z0-9-]{1,40}$/, "not a region name")
        .optional(),
      force_path_style: z.boolean().optional(),
    })
    .optional(),
  keys: z.array(z.string()).optional(),
  interval: duration.optional(),
  /** One image's download from its origin must finish within this (default 6h). */
  deadline: duration.optional(),
  /** Less than stall_bytes (default 16 KiB) from an origin within this (default 60s) is a stall: that fetch fails. */
  stall: duration.optional(),
  stall_bytes: stallBytes,
  /** The fleet control plane's database: postgres://… or sqlite:PATH (default: SQLite in state_dir). */
  database: z
    .string()
    .refine(
      (d) => /^postgres(ql)?:\/\//.test(d) || /^(sqlite:)?\//.test(d),
      "must be postgres://… or sqlite:/PATH",
    )
    .optional(),
  /**
   * With database: postgres://…, how long a fetch waits for another host's fetch of the same
   * image to publish before it skips that image for this round (default 60s).
   */
  publish_lock_wait: duration.optional(),
  /** Where the server keeps its own state (default /var/lib/os-update-server). */
  state_dir: z.string().startsWith("/", "must be an absolute path").optional(),
  serve: z
    .strictObject({
      listen: z.string().optional(),
      port: z.number().int().min(0).max(65535).optional(),
      cert: z.string().optional(),
      key: z.string().optional(),
      tokens_dir: z.string().optional(),
      /** Streams at once over all devices (more get 503), and per device (more get 429). */
      max_streams: z.number().int().min(1).max(100000).optional(),
      max_streams_per_device: z.number().int().min(1).max(100000).optional(),
      /** A device that takes less than stall_bytes within this (default 60s) is dropped. */
      stall: duration.optional(),
      stall_bytes: stallBytes,
      /** ed25519 private key that signs downgrade assignments (abort, pin); none: no downgrades. */
      assignment_key: z.string().startsWith("/", "must be an absolute path").optional(),
      /** POST /v1/events's token bucket per device (io/server/fleet/report-limit.ts). */
      report_limit: z
        .strictObject({
          per_device: bucket.optional(),
          /** Batches of state events only, beyond per_device: a looping device is still bounded. */
          state_events: bucket.optional(),
          /** Buckets kept; the least recently used go first (default 100000). */
          max_clients: z.number().int().min(1).max(10_000_000).optional(),
        })
        .optional(),
      /** POST /v1/enrol's token buckets per client address and per enrolment key (io/server/fleet/enrol-limit.ts). */
      enrol_limit: z
        .strictObject({
          per_address: bucket.optional(),
          per_key: bucket.optional(),
          /** Buckets kept per table; the least recently used go first (default 10000). */
          max_clients: z.number().int().min(1).max(1_000_000).optional(),
        })
        .optional(),
      /** Answer stream requests with a 302 to a presigned URL of the bucket (storage: s3://… only). */
      redirect: z.boolean().optional(),
      /** How long a presigned URL is good for (default 5m). */
      redirect_expiry: duration.optional(),
      /** How often running rollouts are judged besides on each report (default 30s). */
      rollout_interval: duration.optional(),
      /**
       * Maintenance windows per device group (the devices having all `tags`; none: every device),
       * first match wins: a device switches to a new root only inside its window.
       */
      windows: windowGroupsSchema.optional(),
    })
    .optional(),
});

export type ServerConfig = z.infer<typeof serverConfigSchema>;
export type ServerImage = z.infer<typeof serverImageSchema>;

export const deviceConfigSchema = z.strictObject({
  update: z.strictObject({
    server: z
      .string()
      .regex(/^([A-Za-z0-9._-]+@)?[A-Za-z0-9.:_\-[\]]+$/, "must be USER@HOST or HOST")
      .optional(),
    name: imageName,
    pkey: z.string().optional(),
    url: z
      .string()
      .refine((u) => /^https?:\/\//.test(u), "must be an http:// or https:// URL")
      .optional(),
    /**
     * More servers with the same images and fleet database (replicas): tried in order after url
     * when a server cannot be reached or its download breaks off; a download resumes on the next.
     */
    mirrors: z
      .array(z.string().refine((u) => /^https?:\/\//.test(u), "must be an http:// or https:// URL"))
      .max(16)
      .optional(),
    token: z.string().optional(),
    keys: z.array(z.string()).optional(),
    /** Keys whose signed assignment allows a downgrade (default /usr/share/eos/assignment-keys). */
    assignment_keys: z.array(z.string()).optional(),
    tries: z.number().int().min(1).max(9).optional(),
    ca: z.string().optional(),
    port: z.number().int().min(1).max(65535).optional(),
    known_hosts: z.string().optional(),
    /** The whole download of an update must finish within this (default 6h). */
    deadline: duration.optional(),
    /** Less than stall_bytes (default 16 KiB) within this (default 60s) is a stall: reconnect and resume. */
    stall: duration.optional(),
    stall_bytes: stallBytes,
  }),
});

export type DeviceConfig = z.infer<typeof deviceConfigSchema>;

function describePath(path: PropertyKey[]): string {
  return path.reduce<string>((acc, part) => {
    if (typeof part === "number") return `${acc}[${part}]`;
    return acc ? `${acc}.${String(part)}` : String(part);
  }, "");
}

/** Parses YAML and validates it; errors name the file and the key. */
export function parseYamlConfig<T extends z.ZodType>(text: string, file: string, schema: T): z.infer<T> {
  const data = parseYamlData(text, file);
  const result = schema.safeParse(data ?? {});
  if (!result.success) {
    const lines = result.error.issues.map((issue) => {
      const key = describePath(issue.path);
      if (issue.code === "unrecognized_keys") {
        const keys = issue.keys.map((k) => (key ? `${key}.${k}` : k)).join(", ");
        return `unknown key ${keys}`;
      }
      return `${key || "(top level)"}: ${issue.message}`;
    });
    throw new EosError("CONFIG", `${file}: ${lines.join("; ")}`);
  }
  return result.data;
}
