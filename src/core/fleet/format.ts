/**
 * How `os-update-server devices list|show` and `rollout list|show` print
 * for a person (--json prints the API's answer as it is).
 */
import { formatWaves, type Rollout, type WaveCount } from "./rollout.ts";

export interface DeviceRow {
  id: string;
  image: string | null;
  running_version: string | null;
  running_slot: string | null;
  other_version: string | null;
  state: string;
  last_seen: string;
  last_event: string | null;
  registry: string | null;
  architecture: string | null;
  first_seen: string;
  dropped: number;
  tags: string[];
}

export interface EventRow {
  time: string;
  type: string;
  data: Record<string, unknown>;
}

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length))) ?? [];
  return (
    rows
      .map((r) =>
        r
          .map((c, i) => c.padEnd(widths[i] ?? 0))
          .join("  ")
          .trimEnd(),
      )
      .join("\n") + "\n"
  );
}

export function formatDeviceList(devices: DeviceRow[]): string {
  if (devices.length === 0) return "no devices\n";
  return table([
    ["DEVICE", "IMAGE", "VERSION", "SLOT", "OTHER", "STATE", "LAST SEEN", "TAGS"],
    ...devices.map((d) => [
      d.id,
      d.image ?? "-",
      d.running_version ?? "-",
      d.running_slot ?? "-",
      d.other_version ?? "-",
      d.state,
      d.last_seen,
      d.tags.join(",") || "-",
    ]),
  ]);
}

const DETAIL_SKIP = new Set(["id", "time", "type"]);

export function formatDevice(device: DeviceRow, events: EventRow[]): string {
  const fields: Array<[string, string]> = [
    ["device", device.id],
    ["image", device.image ?? "-"],
    ["architecture", device.architecture ?? "-"],
    ["running", `${device.running_version ?? "?"} (slot ${device.running_slot ?? "?"})`],
    ["other slot", device.other_version ?? "-"],
    ["state", device.state],
    ["last event", device.last_event ?? "-"],
    ["registry", device.registry ?? "-"],
    ["tags", device.tags.join(", ") || "-"],
    ["first seen", device.first_seen],
    ["last seen", device.last_seen],
  ];
  if (device.dropped > 0) fields.push(["dropped", `${device.dropped} events (its queue was full)`]);
  const head = fields.map(([k, v]) => `${`${k}:`.padEnd(14)}${v}`).join("\n");
  const history = events.map((e) => {
    const detail = Object.entries(e.data)
      .filter(([k]) => !DETAIL_SKIP.has(k))
      .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`)
      .join(" ");
    return `  ${e.time}  ${e.type.padEnd(17)} ${detail}`.trimEnd();
  });
  return `${head}\n\nevents (oldest first):\n${history.join("\n") || "  none"}\n`;
}

const share = (x: number) => `${Math.round(x * 1000) / 10}%`;

export function formatRolloutList(rollouts: Rollout[]): string {
  if (rollouts.length === 0) return "no rollouts\n";
  return table([
    ["ROLLOUT", "IMAGE", "VERSION", "PREVIOUS", "STATE", "WAVE", "WAVES", "REASON"],
    ...rollouts.map((r) => [
      r.id,
      r.image,
      r.version,
      r.previous,
      r.state,
      `${r.current_wave + 1}/${r.waves.length}`,
      formatWaves(r.waves),
      r.reason ?? "",
    ]),
  ]);
}

export function formatRollout(r: Rollout, wave: WaveCount): string {
  const fields: Array<[string, string]> = [
    ["rollout", r.id],
    ["image", r.image],
    ["version", `${r.version} (devices outside released waves keep ${r.previous})`],
    ["state", r.state],
    ["reason", r.reason ?? "-"],
    ["devices", r.filter.tags.length ? `with tags ${r.filter.tags.join(", ")}` : "all of the image"],
    ["waves", formatWaves(r.waves)],
    ["wave", `${r.current_wave + 1} of ${r.waves.length}, since ${r.wave_started}`],
    [
      "in the wave",
      `${wave.members} devices: ${wave.succeeded} run ${r.version}, ${wave.errors} failed/fell back/rolled back`,
    ],
    ["soak", `${r.soak_seconds} s`],
    [
      "thresholds",
      `pause above ${share(r.error_threshold)} errors; next wave at ${share(r.success_threshold)} success`,
    ],
    ["created", r.created],
  ];
  return `${fields.map(([k, v]) => `${`${k}:`.padEnd(13)}${v}`).join("\n")}\n`;
}

/** GET /v1/admin/windows's answer. */
export interface WindowsRow {
  windows: Array<{ tags: string[]; window: string }>;
  source: "config" | "api";
  updated?: string;
  updated_by?: string;
}

/** The groups in the order they are matched (first match wins), and where they come from. */
export function formatWindows(w: WindowsRow): string {
  const from =
    w.source === "api"
      ? `set through the admin API by ${w.updated_by ?? "?"} at ${w.updated ?? "?"}`
      : "from the server's config (serve.windows)";
  if (w.windows.length === 0) return `no maintenance windows: every device switches at any time (${from})\n`;
  const rows = table([
    ["GROUP", "WINDOW (UTC)"],
    ...w.windows.map((g) => [g.tags.length === 0 ? "(every device)" : g.tags.join(","), g.window]),
  ]);
  const unmatched = w.windows.some((g) => g.tags.length === 0) ? "" : "other devices: any time\n";
  return `${rows}${unmatched}${from}\n`;
}
