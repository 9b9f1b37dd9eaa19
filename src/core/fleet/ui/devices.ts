/**
 * The fleet overview, the device list with its filters and one device's
 * page with its event timeline.
 */
import { DEVICE_STATES, type DeviceEvent, type DeviceInventory } from "../events.ts";
import type { DeviceFilter } from "../admin.ts";
import { compareVersions } from "../../manifest.ts";
import { versionChart, type VersionPoint } from "./chart.ts";
import { h, query } from "./html.ts";
import { dataTable, page, tableRow, type Viewer } from "./layout.ts";

/** A device that has not reported for this long counts as offline. */
export const OFFLINE_AFTER_MS = 60 * 60 * 1000;

export interface DeviceRow extends DeviceInventory {
  id: string;
  tags: string[];
  first_seen: string;
  last_seen: string;
}

export const isOnline = (d: Pick<DeviceRow, "last_seen">, now: Date) =>
  now.getTime() - Date.parse(d.last_seen) <= OFFLINE_AFTER_MS;

function tally<T>(items: readonly T[], key: (item: T) => string): Array<[string, number]> {
  const counts = new Map<string, number>();
  for (const item of items) counts.set(key(item), (counts.get(key(item)) ?? 0) + 1);
  return [...counts];
}

const deviceLink = (id: string) => h`<a href="/ui/devices/${encodeURIComponent(id)}">${id}</a>`;

export function overviewPage(o: {
  viewer: Viewer;
  devices: readonly DeviceRow[];
  history: readonly VersionPoint[];
  now: Date;
}): string {
  const online = o.devices.filter((d) => isOnline(d, o.now)).length;
  const versions = tally(o.devices, (d) => d.running_version ?? "(unknown)").sort((a, b) =>
    compareVersions(a[0], b[0]),
  );
  const states = tally(o.devices, (d) => d.state);
  const versionRows = versions.map(([v, n]) =>
    tableRow([h`<a href="/ui/devices${query({ version: v === "(unknown)" ? undefined : v })}">${v}</a>`, n]),
  );
  const stateRows = states.map(([s, n]) =>
    tableRow([h`<a href="/ui/devices${query({ state: s })}">${s}</a>`, n]),
  );
  // What a screen reader hears when a refresh changes it (layout.ts SCRIPT): the counts, not the page.
  const summary = `${o.devices.length} devices, ${online} online; ${states.map(([s, n]) => `${n} ${s}`).join(", ")}`;
  const body = h`<p class="visually-hidden" data-announce>${summary}</p>
    <section aria-labelledby="h-counts" class="cards">
      <h2 id="h-counts" class="visually-hidden">Devices</h2>
      <div class="card"><strong>${o.devices.length}</strong> devices</div>
      <div class="card"><strong>${online}</strong> online</div>
      <div class="card">
        <strong>${o.devices.length - online}</strong> offline (no report for ${OFFLINE_AFTER_MS / 60000} min)
      </div>
    </section>
    <section aria-labelledby="h-chart">
      <h2 id="h-chart">Versions over time</h2>
      ${versionChart(o.history, o.now)}
    </section>
    <div class="cards">
      <section aria-labelledby="h-versions">
        <h2 id="h-versions">Per version</h2>
        ${dataTable(["Version", "Devices"], versionRows)}
      </section>
      <section aria-labelledby="h-states">
        <h2 id="h-states">Per state</h2>
        ${dataTable(["State", "Devices"], stateRows)}
      </section>
    </div>`;
  return page({ title: "Fleet overview", viewer: o.viewer, section: "overview", body, live: true });
}

export function deviceListPage(o: {
  viewer: Viewer;
  devices: readonly DeviceRow[];
  filter: DeviceFilter;
  versions: readonly string[];
  error?: string | undefined;
  now: Date;
}): string {
  const f = o.filter;
  const stateOptions = ["", ...DEVICE_STATES].map(
    (s) => h`<option value="${s}" ${s === (f.state ?? "") ? h` selected` : ""}>${s || "any"}</option>`,
  );
  const versionOptions = o.versions.map((v) => h`<option value="${v}"></option>`);
  const rows = o.devices.map((d) =>
    tableRow([
      deviceLink(d.id),
      d.image ?? "",
      d.running_version ?? "",
      d.state,
      d.tags.join(", "),
      isOnline(d, o.now) ? "online" : "offline",
      h`<time datetime="${d.last_seen}">${d.last_seen}</time>`,
    ]),
  );
  const body = h`<form
      method="get"
      action="/ui/devices"
      class="filters"
      role="search"
      aria-label="Filter devices"
    >
      <div>
        <label for="f-tag">Tag</label><input id="f-tag" name="tag" value="${f.tag ?? ""}" maxlength="64" />
      </div>
      <div>
        <label for="f-version">Version</label
        ><input id="f-version" name="version" list="versions" value="${f.version ?? ""}" maxlength="64" />
        <datalist id="versions">${versionOptions}</datalist>
      </div>
      <div>
        <label for="f-state">State</label
        ><select id="f-state" name="state">
          ${stateOptions}
        </select>
      </div>
      <div><button type="submit">Filter</button> <a href="/ui/devices">Clear</a></div>
    </form>
    ${o.error ? h`<p class="error" role="alert">${o.error}</p>` : ""}
    <p data-announce>${o.devices.length} device${o.devices.length === 1 ? "" : "s"}</p>
    ${dataTable(["Device", "Image", "Version", "State", "Tags", "Online", "Last report"], rows)}`;
  return page({ title: "Devices", viewer: o.viewer, section: "devices", body, live: true });
}

/** What one event says beyond its type, as text. */
export function eventSummary(e: DeviceEvent): string {
  switch (e.type) {
    case "checked":
      return `running ${e.version ?? "?"} (slot ${e.slot})${e.available ? `, offered ${e.offered ?? "an update"}` : ""}`;
    case "download_started":
      return `${e.version}: ${e.path} download of ${e.bytes} bytes`;
    case "download_progress":
      return `${e.version}: ${e.bytes} of ${e.total} bytes`;
    case "written":
      return `${e.version} written to slot ${e.slot}`;
    case "kexec":
      return `booting ${e.version} from slot ${e.slot}`;
    case "committed":
    case "fell_back":
    case "rolled_back":
      return `${e.version ?? "?"} in slot ${e.slot}`;
    case "failed":
      return `${e.stage}: ${e.code}: ${e.message}`;
  }
}

export function devicePage(o: {
  viewer: Viewer;
  device: DeviceRow;
  events: ReadonlyArray<{ time: string; type: string; data: DeviceEvent }>;
  now: Date;
}): string {
  const d = o.device;
  const facts: Array<[string, string]> = [
    ["Image", d.image ?? ""],
    ["Architecture", d.architecture ?? ""],
    ["Running", `${d.running_version ?? "?"} (slot ${d.running_slot ?? "?"})`],
    ["Other slot", d.other_version ?? ""],
    ["State", d.state],
    ["Tags", d.tags.join(", ")],
    ["Online", isOnline(d, o.now) ? "yes" : "no"],
    ["First seen", d.first_seen],
    ["Last report", d.last_seen],
  ];
  const items = [...o.events].reverse().map(
    (e) =>
      h`<li>
          <time datetime="${e.time}">${e.time}</time> <strong>${e.type}</strong>: ${eventSummary(e.data)}
        </li>`,
  );
  const last = o.events[o.events.length - 1];
  const summary = `${d.id}: ${d.state}, running ${d.running_version ?? "?"}${last ? `; last event ${last.type}` : ""}`;
  const body = h`<p class="visually-hidden" data-announce>${summary}</p>
    <dl>
      ${facts.map(
        ([k, v]) =>
          h`<dt>${k}</dt>
            <dd>${v}</dd>`,
      )}
    </dl>
    <section aria-labelledby="h-timeline">
      <h2 id="h-timeline">Event timeline (newest first)</h2>
      ${
        items.length
          ? h`<ol class="timeline">
              ${items}
            </ol>`
          : h`<p>No events.</p>`
      }
    </section>
    <p><a href="/ui/devices">All devices</a></p>`;
  return page({ title: `Device ${d.id}`, viewer: o.viewer, section: "devices", body, live: true });
}
