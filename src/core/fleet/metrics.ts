/**
 * The server's metrics in Prometheus's text exposition format (version
 * 0.0.4): request counters by route and status, bytes served, devices per
 * state and version, rollouts per state. Routes are the API's templates
 * (an image or device name never becomes a label), so the number of series
 * stays bounded whatever clients ask for.
 */

export interface Sample {
  labels: Record<string, string>;
  value: number;
}

export interface Family {
  name: string;
  help: string;
  type: "counter" | "gauge";
  samples: Sample[];
}

const escapeLabel = (v: string) => v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
const escapeHelp = (v: string) => v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");

export function exposition(families: readonly Family[]): string {
  const out: string[] = [];
  for (const f of families) {
    out.push(`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.type}`);
    for (const s of f.samples) {
      const labels = Object.entries(s.labels)
        .map(([k, v]) => `${k}="${escapeLabel(v)}"`)
        .join(",");
      out.push(`${f.name}${labels ? `{${labels}}` : ""} ${Number.isFinite(s.value) ? s.value : 0}`);
    }
  }
  return `${out.join("\n")}\n`;
}

const ROUTES: Array<[RegExp, string]> = [
  [
    /^\/v1\/images\/[^/]+\/(root|firmware|manifest\.json|manifest\.json\.sig|assignment)$/,
    "/v1/images/:name/$1",
  ],
  [/^\/v1\/images\/[^/]+\/deltas\/[^/]+$/, "/v1/images/:name/deltas/:from"],
  [/^\/v1\/images\/[^/]+\/deltas$/, "/v1/images/:name/deltas"],
  [/^\/v1\/admin\/(devices|rollouts|tokens)\/[^/]+\/([a-z]+)$/, "/v1/admin/$1/:id/$2"],
  [/^\/v1\/admin\/(devices|rollouts|tokens)\/[^/]+$/, "/v1/admin/$1/:id"],
  // The rollouts page polls this: its own route, so the polls' load shows apart from the pages.
  [/^\/ui\/rollouts\/[^/]+\/progress$/, "/ui/rollouts/:id/progress"],
  [/^\/ui\/(devices|rollouts)\/.+$/, "/ui/$1/:id"],
];
const FIXED = new Set([
  "/health",
  "/metrics",
  "/v1/images",
  "/v1/events",
  "/v1/admin/whoami",
  "/v1/admin/devices",
  "/v1/admin/rollouts",
  "/v1/admin/tokens",
  "/v1/admin/windows",
  "/ui",
  "/ui/login",
  "/ui/logout",
  "/ui/devices",
  "/ui/rollouts",
  "/ui/rollouts/new",
  "/ui/images",
  "/ui/app.css",
  "/ui/app.js",
]);

/** The route template a request path falls under; "other" for anything unknown (404s, probes). */
export function routeOf(path: string): string {
  if (FIXED.has(path)) return path;
  for (const [pattern, template] of ROUTES) if (pattern.test(path)) return path.replace(pattern, template);
  return "other";
}

/** Counters of requests and bytes, keyed by route and status. */
export class RequestCounters {
  private readonly requests = new Map<string, number>();
  private readonly bytes = new Map<string, number>();

  observe(path: string, status: number, bytes: number): void {
    const route = routeOf(path);
    const key = `${route}\n${status}`;
    this.requests.set(key, (this.requests.get(key) ?? 0) + 1);
    this.bytes.set(route, (this.bytes.get(route) ?? 0) + Math.max(0, bytes));
  }

  families(): Family[] {
    return [
      {
        name: "eos_http_requests_total",
        help: "HTTP requests answered, by route template and status.",
        type: "counter",
        samples: [...this.requests].map(([key, value]) => {
          const [route, status] = key.split("\n") as [string, string];
          return { labels: { route, status }, value };
        }),
      },
      {
        name: "eos_http_response_bytes_total",
        help: "Body bytes sent, by route template.",
        type: "counter",
        samples: [...this.bytes].map(([route, value]) => ({ labels: { route }, value })),
      },
    ];
  }
}

/** The fleet's gauges from the inventory and the rollouts. */
export function fleetFamilies(o: {
  devices: ReadonlyArray<{
    state: string;
    image: string | null;
    running_version: string | null;
    online: boolean;
  }>;
  rollouts: ReadonlyArray<{ id: string; image: string; state: string; current_wave: number }>;
  images: number;
}): Family[] {
  const count = (keys: string[][]) => {
    const m = new Map<string, number>();
    for (const k of keys) m.set(JSON.stringify(k), (m.get(JSON.stringify(k)) ?? 0) + 1);
    return [...m].map(([k, n]) => [JSON.parse(k) as string[], n] as const);
  };
  return [
    {
      name: "eos_devices",
      help: "Devices in the inventory, by state.",
      type: "gauge",
      samples: count(o.devices.map((d) => [d.state])).map(([[state], value]) => ({
        labels: { state: state as string },
        value,
      })),
    },
    {
      name: "eos_devices_by_version",
      help: "Devices in the inventory, by image and running version.",
      type: "gauge",
      samples: count(o.devices.map((d) => [d.image ?? "", d.running_version ?? ""])).map(
        ([[image, version], value]) => ({
          labels: { image: image as string, version: version as string },
          value,
        }),
      ),
    },
    {
      name: "eos_devices_online",
      help: "Devices that reported within the last hour.",
      type: "gauge",
      samples: [{ labels: {}, value: o.devices.filter((d) => d.online).length }],
    },
    {
      name: "eos_rollout_state",
      help: "1 for each rollout's current state.",
      type: "gauge",
      samples: o.rollouts.map((r) => ({
        labels: { rollout: r.id, image: r.image, state: r.state },
        value: 1,
      })),
    },
    {
      name: "eos_rollout_wave",
      help: "Each rollout's newest released wave, counted from 1.",
      type: "gauge",
      samples: o.rollouts.map((r) => ({
        labels: { rollout: r.id, image: r.image },
        value: r.current_wave + 1,
      })),
    },
    {
      name: "eos_images_published",
      help: "Images this server publishes.",
      type: "gauge",
      samples: [{ labels: {}, value: o.images }],
    },
  ];
}
