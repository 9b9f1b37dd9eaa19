import { test } from "node:test";
import assert from "node:assert/strict";
import { escapeHtml, h, raw } from "../../src/core/fleet/ui/html.ts";
import { deviceListPage, devicePage, overviewPage, type DeviceRow } from "../../src/core/fleet/ui/devices.ts";
import {
  actionsFor,
  confirmPage,
  imagesPage,
  ROLLOUT_LIST_PATH,
  rolloutList,
  rolloutPage,
  rolloutProgress,
  rolloutsPage,
  waveProgress,
} from "../../src/core/fleet/ui/rollouts.ts";
import { versionSeries } from "../../src/core/fleet/ui/chart.ts";
import { loginPage } from "../../src/core/fleet/ui/layout.ts";
import type { Rollout } from "../../src/core/fleet/rollout.ts";

const PAYLOAD = `"><script>alert(1)</script><img src=x onerror='x'>`;
const NOW = new Date("2026-12-01T12:00:00Z");
const operator = { name: "ops", role: "operator", csrf: "c".repeat(43) };
const viewer = { name: "watcher", role: "viewer", csrf: "v".repeat(43) };

function device(id: string, o: Partial<DeviceRow> = {}): DeviceRow {
  return {
    id,
    tags: [],
    first_seen: "2026-12-01T10:00:00.000Z",
    last_seen: "2026-12-01T11:59:00.000Z",
    image: "EOS",
    architecture: "x86_64",
    running_slot: "A",
    running_version: "1.0.0",
    other_version: null,
    root_sha256: null,
    registry: null,
    state: "current",
    last_event: "checked",
    last_event_at: "2026-12-01T11:59:00.000Z",
    ...o,
  };
}

const rollout: Rollout = {
  id: "r1",
  image: "EOS",
  version: "2.0.0",
  previous: "1.0.0",
  filter: { tags: [] },
  waves: [{ percent: 50 }, { percent: 100 }],
  soak_seconds: 60,
  error_threshold: 0.1,
  success_threshold: 0.9,
  state: "running",
  current_wave: 0,
  wave_started: "2026-12-01T11:00:00.000Z",
  reason: PAYLOAD,
  created: "2026-12-01T11:00:00.000Z",
};

/** No payload survives as markup: only its escaped form appears. */
function assertEscaped(page: string, shown = true): void {
  assert.ok(!page.includes("<script>alert(1)"), "a script tag from data reached the page");
  assert.ok(!page.includes("<img src=x"), "an img tag from data reached the page");
  if (shown)
    assert.ok(page.includes("&lt;script&gt;alert(1)&lt;/script&gt;"), "the payload is shown as text");
}

test("h`` escapes every interpolated value, quotes included, and keeps fragments", () => {
  assert.equal(
    escapeHtml(`<a href="x" title='y'>&\``),
    "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&#96;",
  );
  const inner = h`<b>${"<i>"}</b>`;
  assert.equal(
    h`<p title="${PAYLOAD}">${inner}${[1, "<", null, false]}</p>`.text,
    `<p title="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=&#39;x&#39;&gt;"><b>&lt;i&gt;</b>1&lt;</p>`,
  );
  assert.equal(raw("<hr>").text, "<hr>");
});

test("a payload in a device's version, tag, id or event message comes out escaped on every page", () => {
  const d = device("dev-1", { running_version: PAYLOAD, tags: [PAYLOAD], other_version: PAYLOAD });
  assertEscaped(
    overviewPage({
      viewer,
      devices: [d],
      history: [{ device: "dev-1", time: d.last_seen, version: PAYLOAD }],
      now: NOW,
    }),
  );
  assertEscaped(
    deviceListPage({ viewer, devices: [d], filter: { version: PAYLOAD }, versions: [PAYLOAD], now: NOW }),
  );
  assertEscaped(
    devicePage({
      viewer,
      device: d,
      events: [
        {
          time: d.last_seen,
          type: "failed",
          data: {
            id: "e-000001",
            time: d.last_seen,
            type: "failed",
            stage: "apply",
            code: "IO",
            message: PAYLOAD,
          },
        },
      ],
      now: NOW,
    }),
  );
  assertEscaped(
    rolloutsPage({ viewer: operator, rollouts: [{ rollout, waves: waveProgress(rollout, []) }] }),
  );
  assertEscaped(confirmPage({ viewer: operator, rollout, action: "pause" }), false);
  assertEscaped(
    imagesPage({
      viewer,
      images: [
        {
          name: "EOS",
          versions: [
            {
              version: PAYLOAD,
              published: "",
              current: true,
              signed: true,
              rootBytes: 1,
              firmwareBytes: undefined,
              deltas: [],
            },
          ],
        },
      ],
    }),
  );
  assertEscaped(loginPage({ error: PAYLOAD }));
});

test("the signed-in frame carries the session's CSRF token in its sign-out form", () => {
  const page = overviewPage({ viewer: operator, devices: [], history: [], now: NOW });
  assert.match(
    page,
    new RegExp(
      `<form method="post" action="/ui/logout"[^>]*><input type="hidden" name="csrf" value="${operator.csrf}">`,
    ),
  );
  assert.match(page, /<meta name="viewport"/);
});

test("an operator gets the rollout's buttons, a viewer none; the confirm form posts with the CSRF token", () => {
  const asOperator = rolloutsPage({
    viewer: operator,
    rollouts: [{ rollout, waves: waveProgress(rollout, []) }],
  });
  assert.match(asOperator, /href="\/ui\/rollouts\/r1\/pause"/);
  assert.match(asOperator, /href="\/ui\/rollouts\/r1\/abort"/);
  assert.doesNotMatch(asOperator, /\/resume"/);
  const asViewer = rolloutsPage({ viewer, rollouts: [{ rollout, waves: waveProgress(rollout, []) }] });
  assert.doesNotMatch(asViewer, /\/ui\/rollouts\/r1\/(pause|resume|abort)/);
  const confirm = confirmPage({ viewer: operator, rollout, action: "pause" });
  assert.match(
    confirm,
    new RegExp(
      `<form method="post" action="/ui/rollouts/r1/pause">\\s*<input type="hidden" name="csrf" value="${operator.csrf}">`,
    ),
  );
  assert.deepEqual(actionsFor({ state: "paused" }), ["resume", "abort"]);
  assert.deepEqual(actionsFor({ state: "aborted" }), []);
});

test("a rollout's progress is a live region the page embeds and its progress URL serves alone", () => {
  const waves = waveProgress(rollout, []);
  const fragment = rolloutProgress(rollout, waves, operator).text;
  assert.match(
    fragment,
    /^<div id="progress-r1" data-live="5" data-src="\/ui\/rollouts\/r1\/progress" aria-live="polite">/,
  );
  assert.match(fragment, /<strong data-state>running<\/strong>/);
  assert.match(fragment, /aria-label="wave 1 success: 0%, threshold 90%"/);
  assert.match(fragment, /href="\/ui\/rollouts\/r1\/pause"/, "the buttons follow the state it polls");
  const page = rolloutsPage({ viewer: operator, rollouts: [{ rollout, waves }] });
  assert.ok(page.includes(fragment), "the page and the poll render the same markup");
  // The page's main part does not refresh as well: the rollout's region is what updates.
  assert.doesNotMatch(page, /<main[^>]*data-live/);
  assert.doesNotMatch(rolloutProgress(rollout, waves, viewer).text, /\/pause"/);
});

test("the rollouts page's list is a keyed live region; a rollout it has not shown comes in fetching its progress", () => {
  const waves = waveProgress(rollout, []);
  const page = rolloutsPage({ viewer: operator, rollouts: [{ rollout, waves }] });
  assert.match(
    page,
    new RegExp(`<div id="rollout-list" data-live="5" data-src="${ROLLOUT_LIST_PATH}" data-keyed>`),
  );
  assert.match(page, /<section id="rollout-r1" aria-labelledby="h-r1"/, "a section is kept by its id");
  assert.match(page, /<h2 id="h-r1"><a href="\/ui\/rollouts\/r1">r1<\/a>/);
  const fragment = rolloutList([{ rollout }], operator).text;
  assert.match(fragment, /<section id="rollout-r1"/);
  assert.match(
    fragment,
    /<div id="progress-r1" data-live="5" data-src="\/ui\/rollouts\/r1\/progress" aria-live="polite">\s*<p>Loading/,
  );
  assert.match(rolloutList([], operator).text, /No rollouts/);
});

test("a rollout's page lists the devices it covers with their wave, and its live progress", () => {
  const tagged: Rollout = { ...rollout, filter: { tags: ["lab"] } };
  const members = [
    device("lab-1", { tags: ["lab"], state: "committed", running_version: "2.0.0" }),
    device("lab-2", { tags: ["lab", "x"] }),
    device("field-1", { tags: [] }),
  ];
  const page = rolloutPage({ viewer, rollout: tagged, waves: waveProgress(tagged, members), members });
  assert.match(page, /<h1>Rollout r1<\/h1>/);
  assert.match(page, /Devices \(2\)/);
  assert.match(page, /href="\/ui\/devices\/lab-1"/);
  assert.match(page, /href="\/ui\/devices\/lab-2"/);
  assert.doesNotMatch(page, /field-1/, "a device outside the rollout's tags is not listed");
  assert.match(page, /<div id="progress-r1" data-live="5"/);
  assertEscaped(page);
});

test("the overview and a device's page carry the summary a refresh announces", () => {
  const devices = [device("a"), device("b", { state: "failed", last_seen: "2026-12-01T09:00:00.000Z" })];
  const overview = overviewPage({ viewer, devices, history: [], now: NOW });
  assert.match(
    overview,
    /<p class="visually-hidden" data-announce>2 devices, 1 online; 1 current, 1 failed<\/p>/,
  );
  assert.match(overview, /<div id="announcer" class="visually-hidden" aria-live="polite"><\/div>/);
  const one = devicePage({
    viewer,
    device: device("a"),
    events: [
      {
        time: NOW.toISOString(),
        type: "checked",
        data: {
          type: "checked",
          id: "e1",
          time: NOW.toISOString(),
          version: "1.0.0",
          slot: "A",
          sha256: "a".repeat(64),
          available: false,
        },
      },
    ],
    now: NOW,
  });
  assert.match(one, /data-announce>a: current, running 1\.0\.0; last event checked</);
});

test("wave progress counts each wave's devices, successes and errors", () => {
  const members = ["a", "b", "c", "d", "e", "f", "g", "h"].map((id, i) => ({
    id,
    tags: [],
    state: i % 3 === 0 ? ("failed" as const) : ("committed" as const),
    running_version: i % 2 === 0 ? "2.0.0" : "1.0.0",
    last_event_at: "2026-12-01T11:30:00.000Z",
  }));
  const waves = waveProgress(rollout, members);
  assert.equal(waves.length, 2);
  assert.equal(waves[0]!.members + waves[1]!.members, 8);
  for (const w of waves) assert.ok(w.succeeded + w.errors <= w.members);
  assert.equal(waves[0]!.released, true);
  assert.equal(waves[1]!.released, false);
  const total = waves.reduce((n, w) => n + w.errors, 0);
  assert.equal(total, 3);
});

test("the chart's series count devices per version at each step, carrying the last report forward", () => {
  const { times, series } = versionSeries(
    [
      { device: "a", time: "2026-12-01T10:00:00Z", version: "1.0.0" },
      { device: "b", time: "2026-12-01T10:00:00Z", version: "1.0.0" },
      { device: "a", time: "2026-12-01T11:00:00Z", version: "2.0.0" },
    ],
    NOW,
    2,
  );
  assert.equal(times.length, 2);
  assert.deepEqual(series, [
    { version: "1.0.0", counts: [1, 1] },
    { version: "2.0.0", counts: [1, 1] },
  ]);
  const early = versionSeries(
    [
      { device: "a", time: "2026-12-01T10:00:00Z", version: "1.0.0" },
      { device: "a", time: "2026-12-01T11:30:00Z", version: "2.0.0" },
    ],
    NOW,
    4,
  );
  assert.deepEqual(early.series.find((s) => s.version === "2.0.0")?.counts, [0, 0, 1, 1]);
});
