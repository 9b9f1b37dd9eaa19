/**
 * The overview's chart of versions over time: from the devices' reports of
 * the version they run (checked, committed, fell back, rolled back), how
 * many devices ran each version at the end of each time step. Drawn as a
 * server-rendered SVG with a title and a description for screen readers.
 */
import { compareVersions } from "../../manifest.ts";
import { h, type Html } from "./html.ts";

export interface VersionPoint {
  device: string;
  time: string;
  version: string;
}

export interface Series {
  version: string;
  counts: number[];
}

const MAX_SERIES = 6;
const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#7f7f7f"];

/** Devices per version at `steps` evenly spaced instants from the first point to `now`. */
export function versionSeries(
  points: readonly VersionPoint[],
  now: Date,
  steps = 24,
): { times: number[]; series: Series[] } {
  const sorted = [...points].sort((a, b) => Date.parse(a.time) - Date.parse(b.time));
  if (sorted.length === 0) return { times: [], series: [] };
  const start = Date.parse((sorted[0] as VersionPoint).time);
  const end = Math.max(now.getTime(), start + 1);
  const times = Array.from({ length: steps }, (_, i) => start + ((end - start) * (i + 1)) / steps);
  const running = new Map<string, string>();
  const rows: Array<Map<string, number>> = [];
  let next = 0;
  for (const t of times) {
    while (next < sorted.length && Date.parse((sorted[next] as VersionPoint).time) <= t) {
      const p = sorted[next++] as VersionPoint;
      running.set(p.device, p.version);
    }
    const counts = new Map<string, number>();
    for (const v of running.values()) counts.set(v, (counts.get(v) ?? 0) + 1);
    rows.push(counts);
  }
  const peak = new Map<string, number>();
  for (const row of rows) for (const [v, n] of row) peak.set(v, Math.max(peak.get(v) ?? 0, n));
  const ranked = [...peak.keys()].sort((a, b) => (peak.get(b) ?? 0) - (peak.get(a) ?? 0));
  const shown = ranked.slice(0, MAX_SERIES).sort(compareVersions);
  const series: Series[] = shown.map((version) => ({
    version,
    counts: rows.map((r) => r.get(version) ?? 0),
  }));
  if (ranked.length > MAX_SERIES) {
    const rest = new Set(ranked.slice(MAX_SERIES));
    series.push({
      version: "other",
      counts: rows.map((r) => [...r].reduce((n, [v, c]) => n + (rest.has(v) ? c : 0), 0)),
    });
  }
  return { times, series };
}

export function versionChart(points: readonly VersionPoint[], now: Date): Html {
  const { times, series } = versionSeries(points, now);
  if (times.length === 0) return h`<p>No device has reported a version yet.</p>`;
  const W = 640;
  const H = 220;
  const pad = { l: 40, r: 10, t: 10, b: 30 };
  const max = Math.max(1, ...series.flatMap((s) => s.counts));
  const x = (i: number) => pad.l + ((W - pad.l - pad.r) * i) / Math.max(1, times.length - 1);
  const y = (n: number) => H - pad.b - ((H - pad.t - pad.b) * n) / max;
  const lines = series.map((s, k) => {
    const d = s.counts.map((n, i) => `${i === 0 ? "M" : "L"}${x(i).toFixed(1)},${y(n).toFixed(1)}`).join(" ");
    return h`<path
      d="${d}"
      fill="none"
      stroke="${COLOURS[k % COLOURS.length] as string}"
      stroke-width="2.5"
      ><title>${s.version}</title></path
    >`;
  });
  const first = new Date(times[0] as number).toISOString().slice(0, 16).replace("T", " ");
  const last = new Date(times.at(-1) as number).toISOString().slice(0, 16).replace("T", " ");
  const final = series.map((s) => `${s.version}: ${s.counts.at(-1) ?? 0}`).join(", ");
  const legend = series.map(
    (s, k) =>
      h`<li>
        <svg width="14" height="14" aria-hidden="true">
          <rect width="14" height="14" fill="${COLOURS[k % COLOURS.length] as string}" />
        </svg>
        ${s.version} (${s.counts.at(-1) ?? 0} now)
      </li>`,
  );
  return h`<figure>
    <svg
      viewBox="0 0 ${W} ${H}"
      width="${W}"
      height="${H}"
      role="img"
      aria-labelledby="chart-title chart-desc"
    >
      <title id="chart-title">Devices per version over time</title>
      <desc id="chart-desc">From ${first} to ${last} UTC. Now: ${final}.</desc>
      <line x1="${pad.l}" y1="${H - pad.b}" x2="${W - pad.r}" y2="${H - pad.b}" stroke="#555" />
      <line x1="${pad.l}" y1="${pad.t}" x2="${pad.l}" y2="${H - pad.b}" stroke="#555" />
      <text x="${pad.l - 6}" y="${pad.t + 10}" text-anchor="end" font-size="12">${max}</text>
      <text x="${pad.l - 6}" y="${H - pad.b}" text-anchor="end" font-size="12">0</text>
      <text x="${pad.l}" y="${H - 8}" font-size="12">${first}</text>
      <text x="${W - pad.r}" y="${H - 8}" text-anchor="end" font-size="12">${last}</text>
      ${lines}
    </svg>
    <figcaption>
      <ul class="legend">
        ${legend}
      </ul>
    </figcaption>
  </figure>`;
}
