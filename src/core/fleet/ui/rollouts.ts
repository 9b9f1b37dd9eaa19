/**
 * Rollouts (per-wave progress against the thresholds, the operator's link to
 * a new one (rollout-form.ts), and pause / resume / abort with a
 * confirmation step) and the published images.
 */
import { allows, isRole } from "../admin.ts";
import { covers, ERROR_STATES, formatWaves, waveOf, type Rollout, type WaveMember } from "../rollout.ts";
import type { RolloutAction } from "./actions.ts";
import { formatBytes } from "../../bytes.ts";
import { h, type Html } from "./html.ts";
import { bar, csrfField, dataTable, page, tableRow, type Viewer } from "./layout.ts";

export interface WaveProgress {
  wave: number;
  label: string;
  members: number;
  succeeded: number;
  errors: number;
  released: boolean;
}

/** Every wave's devices, how many run the new version and how many failed (the current wave's errors count since it opened). */
export function waveProgress(rollout: Rollout, members: readonly WaveMember[]): WaveProgress[] {
  const since = Date.parse(rollout.wave_started);
  return rollout.waves.map((w, wave) => {
    const inWave = members.filter((m) => covers(rollout, m.tags) && waveOf(rollout, m.id, m.tags) === wave);
    const failed = inWave.filter((m) => ERROR_STATES.includes(m.state));
    return {
      wave,
      label: "percent" in w ? `${w.percent}%` : `tag ${w.tag}`,
      members: inWave.length,
      succeeded: inWave.filter(
        (m) => m.running_version === rollout.version && !ERROR_STATES.includes(m.state),
      ).length,
      errors:
        wave === rollout.current_wave
          ? failed.filter((m) => m.last_event_at !== null && Date.parse(m.last_event_at) >= since).length
          : failed.length,
      released: wave <= rollout.current_wave,
    };
  });
}

/** Which buttons a rollout in this state offers (the server checks again when pressed). */
export function actionsFor(rollout: Pick<Rollout, "state">): RolloutAction[] {
  switch (rollout.state) {
    case "running":
      return ["pause", "abort"];
    case "paused":
      return ["resume", "abort"];
    case "completed":
      return ["abort"];
    case "aborted":
      return [];
  }
}

export const canAct = (viewer: Pick<Viewer, "role">) =>
  isRole(viewer.role) && allows(viewer.role, "operator");

const share = (n: number, of: number) => (of === 0 ? 0 : n / of);
const pct = (x: number) => `${(x * 100).toFixed(0)}%`;

/** Seconds between two fetches of a rollout's progress while its page is open. */
export const PROGRESS_EVERY_S = 5;

export const progressPath = (id: string) => `/ui/rollouts/${encodeURIComponent(id)}/progress`;

/**
 * What of a rollout changes while its page is open: its state, each wave's
 * bars and shares, the buttons the state allows. The page embeds it and
 * /ui/rollouts/ID/progress serves it alone for app.js to swap in, so both
 * come from this one function. aria-live: a screen reader hears what changed.
 */
export function rolloutProgress(r: Rollout, waves: readonly WaveProgress[], viewer: Viewer): Html {
  const rows = waves.map((w) => {
    const ok = share(w.succeeded, w.members);
    const bad = share(w.errors, w.members);
    return h`<tr${w.wave === r.current_wave ? h` class="current"` : ""}>
<th scope="row">${w.wave + 1}: ${w.label}${w.released ? "" : " (not yet)"}</th><td>${w.members}</td>
<td>${bar(`wave ${w.wave + 1} success`, ok, { threshold: r.success_threshold })} ${w.succeeded} (${pct(ok)})</td>
<td>${bar(`wave ${w.wave + 1} errors`, bad, { threshold: r.error_threshold, kind: "bad" })} ${w.errors} (${pct(bad)})</td></tr>`;
  });
  const buttons = canAct(viewer)
    ? actionsFor(r).map(
        (a) =>
          h`<a
            class="button${a === "abort" ? " danger" : ""}"
            href="/ui/rollouts/${encodeURIComponent(r.id)}/${a}"
            >${a[0]?.toUpperCase()}${a.slice(1)}</a
          > `,
      )
    : [];
  return h`<div id="progress-${r.id}" data-live="${PROGRESS_EVERY_S}" data-src="${progressPath(r.id)}" aria-live="polite">
    <p>
      State: <strong data-state>${r.state}</strong>; wave ${r.current_wave + 1} of ${r.waves.length}
      (${formatWaves(r.waves)}), soak ${r.soak_seconds} s; thresholds: success ≥ ${pct(r.success_threshold)},
      errors ≤ ${pct(r.error_threshold)}.
      ${r.reason ? h`<br />Reason: ${r.reason}` : ""}${r.filter.tags.length ? h`<br />Devices tagged ${r.filter.tags.join(", ")}` : ""}
    </p>
    ${dataTable(["Wave", "Devices", `Running ${r.version}`, "Errors"], rows)}
    ${buttons.length ? h`<p class="actions">${buttons}</p>` : ""}
  </div>`;
}

export const rolloutPath = (id: string) => `/ui/rollouts/${encodeURIComponent(id)}`;

/** Where the rollouts page asks which rollouts there are; not under /ui/rollouts/, where any id is a rollout's. */
export const ROLLOUT_LIST_PATH = "/ui/rollout-list";

/** A rollout's progress, or (a rollout the page has not shown yet) the region that fetches it at once. */
function rolloutSection(r: Rollout, waves: readonly WaveProgress[] | undefined, viewer: Viewer) {
  const progress = waves
    ? rolloutProgress(r, waves, viewer)
    : h`<div id="progress-${r.id}" data-live="${PROGRESS_EVERY_S}" data-src="${progressPath(r.id)}" aria-live="polite">
        <p>Loading its progress…</p>
      </div>`;
  return h`<section id="rollout-${r.id}" aria-labelledby="h-${r.id}" class="rollout">
    <h2 id="h-${r.id}"><a href="${rolloutPath(r.id)}">${r.id}</a>: ${r.image} ${r.previous} → ${r.version}</h2>
    ${progress}
  </section>`;
}

/**
 * The rollouts as a keyed live region: the page polls ROLLOUT_LIST_PATH for
 * it, keeps the sections it has (their progress refreshes itself) and takes
 * in a rollout created elsewhere (another operator, the CLI, another replica).
 */
export function rolloutList(
  rollouts: ReadonlyArray<{ rollout: Rollout; waves?: WaveProgress[] }>,
  viewer: Viewer,
): Html {
  return h`<div id="rollout-list" data-live="${PROGRESS_EVERY_S}" data-src="${ROLLOUT_LIST_PATH}" data-keyed>
    ${rollouts.length === 0 ? h`<p>No rollouts. An operator creates one here or with <code>os-update-server rollout create</code>.</p>` : ""}
    ${rollouts.map((r) => rolloutSection(r.rollout, r.waves, viewer))}
  </div>`;
}

export function rolloutsPage(o: {
  viewer: Viewer;
  rollouts: ReadonlyArray<{ rollout: Rollout; waves: WaveProgress[] }>;
  notice?: string | undefined;
}): string {
  const body = h`${o.notice ? h`<p class="note" role="status">${o.notice}</p>` : ""}
  ${canAct(o.viewer) ? h`<p><a class="button" href="/ui/rollouts/new">New rollout</a></p>` : ""}
  ${rolloutList(o.rollouts, o.viewer)}`;
  return page({ title: "Rollouts", viewer: o.viewer, section: "rollouts", body });
}

/** Devices listed at most on a rollout's page; the waves' counts above cover all of them. */
export const ROLLOUT_PAGE_DEVICES = 500;

/** One rollout: its progress (live) and the devices it covers, each with its wave. */
export function rolloutPage(o: {
  viewer: Viewer;
  rollout: Rollout;
  waves: readonly WaveProgress[];
  members: readonly WaveMember[];
}): string {
  const r = o.rollout;
  const covered = o.members.filter((m) => covers(r, m.tags));
  const rows = covered
    .slice(0, ROLLOUT_PAGE_DEVICES)
    .map((m) =>
      tableRow([
        h`<a href="/ui/devices/${encodeURIComponent(m.id)}">${m.id}</a>`,
        String(waveOf(r, m.id, m.tags) + 1),
        m.running_version ?? "",
        m.state,
        m.last_event_at ? h`<time datetime="${m.last_event_at}">${m.last_event_at}</time>` : "",
      ]),
    );
  const body = h`<p>${r.image} ${r.previous} → ${r.version}, created ${r.created}.</p>
    ${rolloutProgress(r, o.waves, o.viewer)}
    <section aria-labelledby="h-members">
      <h2 id="h-members">Devices (${covered.length})</h2>
      ${covered.length > ROLLOUT_PAGE_DEVICES ? h`<p>The first ${ROLLOUT_PAGE_DEVICES} are listed.</p>` : ""}
      ${dataTable(["Device", "Wave", "Running", "State", "Last event"], rows)}
    </section>
    <p><a href="/ui/rollouts">All rollouts</a></p>`;
  return page({ title: `Rollout ${r.id}`, viewer: o.viewer, section: "rollouts", body });
}

const CONSEQUENCE: Record<RolloutAction, string> = {
  pause: "Devices not yet on the new version keep the version they run until it resumes.",
  resume: "The current wave opens again and its soak starts over.",
  abort: "Every device of the rollout is assigned the previous version again. This cannot be undone.",
};

export function confirmPage(o: { viewer: Viewer; rollout: Rollout; action: RolloutAction }): string {
  const r = o.rollout;
  const verb = `${o.action[0]?.toUpperCase()}${o.action.slice(1)}`;
  const body = h`<p>
      ${verb} rollout <strong>${r.id}</strong> (${r.image} ${r.previous} → ${r.version}, now ${r.state})?
    </p>
    <p>${CONSEQUENCE[o.action]}</p>
    <form method="post" action="/ui/rollouts/${encodeURIComponent(r.id)}/${o.action}">
      ${csrfField(o.viewer.csrf)} <label for="reason">Reason (optional)</label
      ><input id="reason" name="reason" maxlength="500" />
      <p>
        <button type="submit" ${o.action === "abort" ? h` class="danger"` : ""}>Yes, ${o.action}</button>
        <a href="/ui/rollouts">Cancel</a>
      </p>
    </form>`;
  return page({ title: `${verb} ${r.id}?`, viewer: o.viewer, section: "rollouts", body });
}

export interface ImageVersionRow {
  version: string;
  published: string;
  current: boolean;
  signed: boolean;
  rootBytes: number;
  firmwareBytes: number | undefined;
  deltas: ReadonlyArray<{ from: string; bytes: number }>;
}

export function imagesPage(o: {
  viewer: Viewer;
  images: ReadonlyArray<{ name: string; versions: ImageVersionRow[] }>;
}): string {
  const sections = o.images.map(
    (img) =>
      h`<section aria-labelledby="h-img-${img.name}">
        <h2 id="h-img-${img.name}">${img.name}</h2>
        ${dataTable(
          ["Version", "Published", "Root", "Firmware", "Deltas", "Signed"],
          img.versions.map((v) =>
            tableRow([
              `${v.version}${v.current ? " (current)" : ""}`,
              v.published,
              formatBytes(v.rootBytes),
              v.firmwareBytes === undefined ? "" : formatBytes(v.firmwareBytes),
              v.deltas.map((d) => h`from ${d.from}: ${formatBytes(d.bytes)}<br>`),
              v.signed ? "yes" : "no",
            ]),
          ),
        )}
      </section>`,
  );
  const body = h`${o.images.length === 0 ? h`<p>No image is published yet.</p>` : sections}`;
  return page({ title: "Published images", viewer: o.viewer, section: "images", body });
}
