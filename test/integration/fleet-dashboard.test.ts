/**
 * The dashboard in a real browser (Debian's chromium driven by
 * playwright-core, one launch for the file) against a real
 * `os-update-server serve` over HTTPS, on SQLite and then on a real
 * PostgreSQL: sign in with an operator's admin token, the overview, the
 * device filters, a device's timeline, a version string a device sent as
 * markup shown as text, pausing a rollout through its confirmation step
 * (seen through the admin API), a viewer who gets no buttons and whose
 * POSTs (resume, create) are refused, POSTs without the CSRF token, from
 * another origin or without a session refused, a two-wave rollout created
 * from the form (a bad field first), sign-out; then /health and /metrics.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { access, mkdir, readFile, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { request as httpsRequest } from "node:https";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";
import { runEos } from "../helpers/run.ts";
import { makeTestCert, type TestCert } from "../helpers/serve.ts";
import { makeWorld, releaseImage, writeServerConfig, type World } from "../helpers/server-world.ts";
import { startFleetServer, stopServer, type FleetServer } from "../helpers/fleet-server.ts";
import { startPostgres, type Postgres } from "../helpers/postgres.ts";
import { waveOf, type Rollout } from "../../src/core/fleet/rollout.ts";

const NAME = "EOS.x86_64-AB";
const CHROMIUM = "/usr/bin/chromium";
const XSS = `<img src=x onerror="window.__xss=1">`;
const DEVICES = ["lab-1", "lab-2", "field-1", "odd-1"];

let world: World;
let tls: TestCert;
let fleet: FleetServer;
let browser: Browser | undefined;
let missing = "";
let pg: Postgres | undefined;
let pgUnavailable = "";
let currentKind: "sqlite" | "postgres" = "sqlite";

async function call(
  method: string,
  path: string,
  o: { token?: string; body?: unknown; headers?: Record<string, string> } = {},
) {
  const ca = await readFile(tls.cert);
  return new Promise<{ status: number; text: string; headers: Record<string, unknown> }>(
    (resolve, reject) => {
      const headers: Record<string, string> = { ...o.headers };
      if (o.token) headers.authorization = `Bearer ${o.token}`;
      if (o.body !== undefined) headers["content-type"] = "application/json";
      const req = httpsRequest(`${fleet.server.url}${path}`, { method, ca, headers, agent: false }, (res) => {
        let text = "";
        res.setEncoding("utf8").on("data", (s: string) => (text += s));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, text, headers: res.headers }));
      });
      req.on("error", reject);
      req.end(
        o.body === undefined ? undefined : typeof o.body === "string" ? o.body : JSON.stringify(o.body),
      );
    },
  );
}

let seq = 0;
async function report(id: string, running: string, event: Record<string, unknown>) {
  const body = {
    device: { image: NAME, architecture: "x86_64", slots: { A: running, B: null }, running: "A" },
    events: [{ id: `${id}-ev-${String(++seq).padStart(4, "0")}`, time: new Date().toISOString(), ...event }],
  };
  const r = await call("POST", "/v1/events", { token: fleet.tokens.get(id) as string, body });
  assert.equal(r.status, 200, r.text);
}

before(async () => {
  try {
    await access(CHROMIUM);
  } catch {
    missing = `${CHROMIUM} is not installed (scripts/setup.sh installs it)`;
    return;
  }
  world = await makeWorld();
  await writeServerConfig(world, [{ image: `${world.origin.url}/${NAME}.raw.xz`, name: NAME }]);
  for (const v of ["1.0.0", "2.0.0"]) {
    await releaseImage(world, NAME, v, { payloadBytes: 256 * 1024 });
    const fetched = await runEos("os-update-server", ["fetch", "--config", world.config]);
    assert.equal(fetched.code, 0, fetched.stderr);
  }
  tls = await makeTestCert(world.dir);
  const started = await startPostgres();
  if ("unavailable" in started) pgUnavailable = started.unavailable;
  else pg = started;
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  await pg?.stop();
  if (world) {
    await world.origin.close();
    await rm(world.dir, { recursive: true, force: true });
  }
});

/** A server on the given database: four devices reporting, two tagged lab, rollout r1 running. */
async function startServerOn(kind: "sqlite" | "postgres"): Promise<void> {
  currentKind = kind;
  fleet = await startFleetServer({
    world,
    dir: join(world.dir, `fleet-${kind}`),
    extraConfig: kind === "postgres" && pg ? `database: ${await pg.freshDatabase()}\n` : "",
    deviceIds: DEVICES,
    tls,
  });
  const ops = fleet.env.EOS_ADMIN_TOKEN as string;
  for (const id of DEVICES) {
    const version = id === "odd-1" ? XSS : "1.0.0";
    await report(id, version, {
      type: "checked",
      version,
      slot: "A",
      sha256: "a".repeat(64),
      available: false,
    });
  }
  await report("lab-1", "2.0.0", { type: "committed", version: "2.0.0", slot: "A" });
  for (const id of ["lab-1", "lab-2"]) {
    const r = await call("PUT", `/v1/admin/devices/${id}/tags`, { token: ops, body: { tags: ["lab"] } });
    assert.equal(r.status, 200, r.text);
  }
  const created = await call("POST", "/v1/admin/rollouts", {
    token: ops,
    body: {
      id: "r1",
      image: NAME,
      version: "2.0.0",
      previous: "1.0.0",
      waves: "50%,100%",
      soak_seconds: 3600,
      error_threshold: 0.2,
      success_threshold: 0.9,
    },
  });
  assert.equal(created.status, 201, created.text);
}

async function signIn(token: string): Promise<{ context: BrowserContext; page: Page }> {
  const context = await (browser as Browser).newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1100, height: 900 },
  });
  const page = await context.newPage();
  await page.goto(`${fleet.server.url}/ui`);
  assert.match(page.url(), /\/ui\/login$/);
  await page.getByLabel("Admin token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(/\/ui$/);
  return { context, page };
}

/** Saved for the README when EOS_SCREENSHOT_DIR is set (from the SQLite run only: the pages are the same). */
async function screenshot(page: Page, name: string): Promise<void> {
  const dir = process.env.EOS_SCREENSHOT_DIR;
  if (!dir || currentKind !== "sqlite") return;
  await mkdir(dir, { recursive: true });
  await page.screenshot({ path: join(dir, name), fullPage: true });
}

const rolloutIds = async () =>
  (
    JSON.parse((await call("GET", "/v1/admin/rollouts", { token: fleet.env.VIEWER as string })).text) as {
      rollouts: Array<{ id: string }>;
    }
  ).rollouts
    .map((r) => r.id)
    .sort();

/** A create form that is right in every field: only the session, the role or the CSRF token can refuse it. */
const createForm = (csrf: string) =>
  new URLSearchParams({
    ...(csrf ? { csrf } : {}),
    release: `${NAME}/2.0.0`,
    waves: "50%,100%",
    soak: "1h",
    error_threshold: "10%",
    success_threshold: "90%",
    id: "sneaky",
  }).toString();

/** The status of a form POST sent by the page's own script: its session cookie, this server's origin. */
const postForm = (page: Page, path: string, body: string) =>
  page.evaluate(
    async ([p, b]) =>
      (
        await fetch(p, {
          method: "POST",
          headers: { "content-type": "application/x-www-form-urlencoded" },
          body: b,
        })
      ).status,
    [path, body] as const,
  );

const rolloutState = async () =>
  (
    JSON.parse((await call("GET", "/v1/admin/rollouts/r1", { token: fleet.env.VIEWER as string })).text) as {
      rollout: { state: string; reason: string };
    }
  ).rollout;

for (const kind of ["sqlite", "postgres"] as const) {
  describe(`on ${kind}`, () => {
    const why = () => missing || (kind === "postgres" && !pg ? pgUnavailable : "");
    before(async () => {
      if (!why()) await startServerOn(kind);
    });
    after(async () => {
      if (!why()) await stopServer(fleet.server);
    });

    describe("the dashboard in chromium", () => {
      let ops: { context: BrowserContext; page: Page };

      test("an operator signs in: an HttpOnly, Secure, SameSite=Strict session cookie and the overview", async (t) => {
        if (why()) return t.skip(why());
        ops = await signIn(fleet.env.EOS_ADMIN_TOKEN as string);
        const { page, context } = ops;
        const [cookie] = await context.cookies();
        assert.equal(cookie?.name, "__Host-eos_session");
        assert.equal(cookie?.httpOnly, true);
        assert.equal(cookie?.secure, true);
        assert.equal(cookie?.sameSite, "Strict");
        assert.equal(await page.getByRole("heading", { level: 1 }).textContent(), "Fleet overview");
        assert.match((await page.locator(".cards").first().textContent()) ?? "", /4\s*devices/);
        assert.equal(await page.locator("svg[aria-labelledby='chart-title chart-desc']").count(), 1);
        const perVersion = await page.locator("section[aria-labelledby=h-versions]").textContent();
        assert.match(perVersion ?? "", /2\.0\.0\s*1/);
        assert.match(perVersion ?? "", /1\.0\.0\s*2/);
      });

      test("a version sent as markup is shown as text, never run", async (t) => {
        if (why()) return t.skip(why());
        const { page } = ops;
        await page.goto(`${fleet.server.url}/ui/devices`);
        assert.ok(((await page.locator("table").textContent()) ?? "").includes(XSS));
        assert.equal(await page.locator("main img").count(), 0);
        assert.equal(
          await page.evaluate(() => (globalThis as unknown as { __xss?: number }).__xss),
          undefined,
        );
      });

      test("the overview updates itself without a reload when a device reports", async (t) => {
        if (why()) return t.skip(why());
        const { page } = ops;
        await page.goto(`${fleet.server.url}/ui`);
        const marker = () => page.evaluate(() => (globalThis as unknown as { __same?: number }).__same);
        await page.evaluate(() => void ((globalThis as unknown as { __same?: number }).__same = 1));
        assert.doesNotMatch(
          (await page.locator("section[aria-labelledby=h-states]").textContent()) ?? "",
          /failed/,
        );
        await report("field-1", "1.0.0", {
          type: "failed",
          stage: "check",
          code: "NETWORK",
          message: "unreachable",
        });
        await page
          .locator("section[aria-labelledby=h-states]", { hasText: "failed" })
          .waitFor({ timeout: 30_000 });
        assert.equal(await marker(), 1, "the page was not reloaded");
        // A screen reader hears the new counts, in the region that stayed while the page refreshed.
        assert.equal(await page.locator("#announcer").getAttribute("aria-live"), "polite");
        assert.match(
          (await page.locator("#announcer").textContent()) ?? "",
          /^4 devices, \d online; .*1 failed/,
        );
      });

      test("the device list filters by tag and state; a device shows its timeline", async (t) => {
        if (why()) return t.skip(why());
        const { page } = ops;
        await page.goto(`${fleet.server.url}/ui/devices`);
        await page.getByLabel("Tag").fill("lab");
        await page.getByRole("button", { name: "Filter" }).click();
        await page.waitForURL(/tag=lab/);
        const ids = await page.locator("tbody tr td:first-child").allTextContents();
        assert.deepEqual(ids, ["lab-1", "lab-2"]);
        await page.getByLabel("State").selectOption("committed");
        await page.getByRole("button", { name: "Filter" }).click();
        await page.waitForURL(/state=committed/);
        assert.deepEqual(await page.locator("tbody tr td:first-child").allTextContents(), ["lab-1"]);
        await page.getByRole("link", { name: "lab-1" }).click();
        await page.waitForURL(/\/ui\/devices\/lab-1$/);
        const timeline = (await page.locator("ol.timeline").textContent()) ?? "";
        assert.match(timeline, /committed: 2\.0\.0 in slot A/);
        assert.match(timeline, /checked: running 1\.0\.0/);
      });

      test("the rollouts page shows a wave's new share without a reload when a device reports", async (t) => {
        if (why()) return t.skip(why());
        const { page } = ops;
        await page.goto(`${fleet.server.url}/ui/rollouts`);
        await page.evaluate(() => void ((globalThis as unknown as { __same?: number }).__same = 1));
        const { rollout } = JSON.parse(
          (await call("GET", "/v1/admin/rollouts/r1", { token: fleet.env.VIEWER as string })).text,
        ) as { rollout: Rollout };
        const wave = waveOf(rollout, "lab-2", ["lab"]);
        const row = page.locator("#progress-r1 tbody tr").nth(wave);
        assert.equal(await page.locator("#progress-r1").getAttribute("aria-live"), "polite");
        const members = Number(await row.locator("td").nth(0).textContent());
        const [, before] = /(\d+) \(\d+%\)/.exec((await row.locator("td").nth(1).textContent()) ?? "") ?? [];
        const now = Number(before) + 1;
        const pct = ((now / members) * 100).toFixed(0);
        await report("lab-2", "2.0.0", { type: "committed", version: "2.0.0", slot: "A" });
        await row.locator("td", { hasText: `${now} (${pct}%)` }).waitFor({ timeout: 15_000 });
        assert.equal(
          await row.locator("td").nth(1).locator(".bar").getAttribute("aria-label"),
          `wave ${wave + 1} success: ${pct}%, threshold 90%`,
        );
        assert.equal(
          await page.evaluate(() => (globalThis as unknown as { __same?: number }).__same),
          1,
          "the page was not reloaded",
        );
        await screenshot(page, "dashboard-rollout-live.png");
        // Back as it was: the later tests count lab-2 as running 1.0.0, state current.
        await report("lab-2", "1.0.0", {
          type: "checked",
          version: "1.0.0",
          slot: "A",
          sha256: "a".repeat(64),
          available: false,
        });
        const anonymous = await call("GET", "/ui/rollouts/r1/progress");
        assert.equal(anonymous.status, 401, "no session, no progress (and the poll stops)");
        assert.doesNotMatch(anonymous.text, /data-state/);
      });

      test("an operator pauses a rollout through its confirmation step; the admin API sees it paused", async (t) => {
        if (why()) return t.skip(why());
        const { page } = ops;
        await page.goto(`${fleet.server.url}/ui/rollouts`);
        assert.equal(await page.locator("[data-state]").textContent(), "running");
        assert.equal(await page.locator(".bar").count(), 4);
        await page.getByRole("link", { name: "Pause" }).click();
        await page.waitForURL(/\/ui\/rollouts\/r1\/pause$/);
        assert.equal(await page.getByRole("heading", { level: 1 }).textContent(), "Pause r1?");
        assert.equal((await rolloutState()).state, "running", "nothing happens before the confirmation");
        await page.getByLabel("Reason").fill("looking into wave 1");
        await page.getByRole("button", { name: "Yes, pause" }).click();
        await page.waitForURL(/\/ui\/rollouts$/);
        assert.equal(await page.locator("[data-state]").textContent(), "paused");
        const r = await rolloutState();
        assert.equal(r.state, "paused");
        assert.equal(r.reason, "looking into wave 1");
        await screenshot(page, "dashboard-rollouts.png");
      });

      test("POSTs without the CSRF token, with a wrong one, from another origin or without a session are refused", async (t) => {
        if (why()) return t.skip(why());
        const { page, context } = ops;
        await page.goto(`${fleet.server.url}/ui/rollouts/r1/resume`);
        const csrf = (await page.locator("input[name=csrf]").first().getAttribute("value")) as string;
        const form = { "content-type": "application/x-www-form-urlencoded" };
        assert.equal(await postForm(page, "/ui/rollouts/r1/resume", "reason=x"), 403);
        assert.equal(
          await postForm(page, "/ui/rollouts/r1/resume", `reason=x&csrf=${"A".repeat(csrf.length)}`),
          403,
        );
        const foreign = await context.request.post(`${fleet.server.url}/ui/rollouts/r1/resume`, {
          headers: { ...form, origin: "https://evil.example" },
          data: `csrf=${encodeURIComponent(csrf)}`,
        });
        assert.equal(foreign.status(), 403);
        const anonymous = await call("POST", "/ui/rollouts/r1/resume", {
          headers: { ...form, origin: fleet.server.url },
          body: `csrf=${encodeURIComponent(csrf)}`,
        });
        assert.equal(anonymous.status, 401);
        assert.equal((await rolloutState()).state, "paused");
        assert.equal(await postForm(page, "/ui/rollouts/new", createForm("A".repeat(csrf.length))), 403);
        assert.equal(await postForm(page, "/ui/rollouts/new", createForm("")), 403);
        const foreignCreate = await context.request.post(`${fleet.server.url}/ui/rollouts/new`, {
          headers: { ...form, origin: "https://evil.example" },
          data: createForm(csrf),
        });
        assert.equal(foreignCreate.status(), 403);
        assert.deepEqual(await rolloutIds(), ["r1"], "no rollout was created");
      });

      test("a viewer sees no buttons nor form, and the server refuses the viewer's resume and create", async (t) => {
        if (why()) return t.skip(why());
        const { page, context } = await signIn(fleet.env.VIEWER as string);
        await page.goto(`${fleet.server.url}/ui/rollouts`);
        assert.equal(await page.locator("[data-state]").textContent(), "paused");
        assert.equal(await page.locator(".actions a").count(), 0);
        assert.equal(await page.getByRole("link", { name: "New rollout" }).count(), 0);
        const polled = await page.evaluate(async () => (await fetch("/ui/rollouts/r1/progress")).text());
        assert.match(polled, /<strong data-state>paused<\/strong>/);
        assert.doesNotMatch(
          polled,
          /\/ui\/rollouts\/r1\/(resume|abort)/,
          "the poll brings a viewer no buttons",
        );
        const csrf = (await page.locator("input[name=csrf]").first().getAttribute("value")) as string;
        const confirm = await page.goto(`${fleet.server.url}/ui/rollouts/r1/resume`);
        assert.equal(confirm?.status(), 403);
        assert.equal(await postForm(page, "/ui/rollouts/r1/resume", `csrf=${encodeURIComponent(csrf)}`), 403);
        assert.equal((await rolloutState()).state, "paused");
        const blank = await page.goto(`${fleet.server.url}/ui/rollouts/new`);
        assert.equal(blank?.status(), 403);
        assert.equal(await page.locator("form.rollout-form").count(), 0);
        assert.equal(await postForm(page, "/ui/rollouts/new", createForm(csrf)), 403);
        assert.deepEqual(await rolloutIds(), ["r1"], "no rollout was created");
        await context.close();
      });

      test("an operator creates a two-wave rollout from the form (a bad field named first); the list and the admin API show it", async (t) => {
        if (why()) return t.skip(why());
        const { page } = ops;
        // Another operator's page, open before r2 exists: r2 comes into it without a reload.
        const other = await ops.context.newPage();
        await other.goto(`${fleet.server.url}/ui/rollouts`);
        await other.evaluate(() => void ((globalThis as unknown as { __same?: number }).__same = 1));
        await page.goto(`${fleet.server.url}/ui/rollouts`);
        await page.getByRole("link", { name: "New rollout" }).click();
        await page.waitForURL(/\/ui\/rollouts\/new$/);
        assert.equal(await page.getByRole("heading", { level: 1 }).textContent(), "New rollout");
        assert.equal(await page.getByLabel("Soak time per wave").inputValue(), "1h");
        assert.equal(await page.getByLabel("Error threshold").inputValue(), "10%");
        assert.equal(await page.getByLabel("Success threshold").inputValue(), "90%");
        const versions = page.getByLabel("Version to roll out");
        assert.deepEqual(await versions.locator("option").allTextContents(), [
          `${NAME} 2.0.0 (current)`,
          `${NAME} 1.0.0`,
        ]);
        await versions.selectOption({ label: `${NAME} 2.0.0 (current)` });
        await page.getByLabel("Device tags").fill("lab");
        await page.getByLabel("Name", { exact: true }).fill("r2");
        await page.getByLabel("Waves").fill("abc");
        const [refused] = await Promise.all([
          page.waitForResponse(
            (r) => r.url().endsWith("/ui/rollouts/new") && r.request().method() === "POST",
          ),
          page.getByLabel("Waves").press("Enter"),
        ]);
        assert.equal(refused.status(), 400);
        assert.match(
          (await page.getByRole("alert").textContent()) ?? "",
          /Waves\[0\]: "abc" is neither a share/,
        );
        assert.equal(await page.getByLabel("Waves").getAttribute("aria-invalid"), "true");
        assert.equal(await page.getByLabel("Device tags").inputValue(), "lab", "what was typed is kept");
        assert.deepEqual(await rolloutIds(), ["r1"]);
        await screenshot(page, "dashboard-new-rollout.png");
        await page.getByLabel("Waves").fill("50%, 100%");
        await page.getByLabel("Soak time per wave").fill("30m");
        await page.getByLabel("Error threshold").fill("5%");
        await page.getByLabel("Success threshold").fill("95%");
        await page.getByRole("button", { name: "Create rollout" }).click();
        await page.waitForURL(/\/ui\/rollouts\?created=r2$/);
        assert.equal(
          await page.getByRole("status").textContent(),
          "Rollout r2 created: its first wave is open.",
        );
        const section = page.locator("section[aria-labelledby=h-r2]");
        assert.equal(await section.locator("[data-state]").textContent(), "running");
        assert.deepEqual(await section.locator("tbody th").allTextContents(), [
          "1: 50%",
          "2: 100% (not yet)",
        ]);
        assert.match((await section.textContent()) ?? "", /Devices tagged lab/);
        const arrived = other.locator("#rollout-r2 [data-state]");
        await arrived.waitFor({ timeout: 20_000 });
        assert.equal(await arrived.textContent(), "running", "its progress was fetched in place");
        assert.equal(
          await other.evaluate(() => (globalThis as unknown as { __same?: number }).__same),
          1,
          "the other page was not reloaded",
        );
        assert.equal(await other.locator("#rollout-r1 [data-state]").count(), 1, "r1 stayed");
        // Its own page: the devices it covers (tag lab) with their wave.
        await other.getByRole("link", { name: "r2", exact: true }).click();
        await other.waitForURL(/\/ui\/rollouts\/r2$/);
        assert.equal(await other.getByRole("heading", { level: 1 }).textContent(), "Rollout r2");
        assert.deepEqual(
          (
            await other
              .locator("section[aria-labelledby=h-members] tbody tr td:first-child")
              .allTextContents()
          ).sort(),
          ["lab-1", "lab-2"],
        );
        await screenshot(other, "dashboard-rollout-page.png");
        await other.close();
        const api = JSON.parse(
          (await call("GET", "/v1/admin/rollouts/r2", { token: fleet.env.VIEWER as string })).text,
        ) as { rollout: Record<string, unknown> };
        const {
          id,
          image,
          version,
          previous,
          filter,
          waves,
          soak_seconds,
          error_threshold,
          success_threshold,
          state,
        } = api.rollout;
        assert.deepEqual(
          {
            id,
            image,
            version,
            previous,
            filter,
            waves,
            soak_seconds,
            error_threshold,
            success_threshold,
            state,
          },
          {
            id: "r2",
            image: NAME,
            version: "2.0.0",
            previous: "1.0.0",
            filter: { tags: ["lab"] },
            waves: [{ percent: 50 }, { percent: 100 }],
            soak_seconds: 1800,
            error_threshold: 0.05,
            success_threshold: 0.95,
            state: "running",
          },
        );
        // What the create path refuses comes back as the form naming the field, never a 500.
        const csrf = (await page.locator("input[name=csrf]").first().getAttribute("value")) as string;
        const again = (o: Record<string, string>) =>
          page.evaluate(
            async (b) => {
              const r = await fetch("/ui/rollouts/new", {
                method: "POST",
                headers: { "content-type": "application/x-www-form-urlencoded" },
                body: b,
              });
              return { status: r.status, text: await r.text() };
            },
            new URLSearchParams({
              ...Object.fromEntries(new URLSearchParams(createForm(csrf))),
              ...o,
            }).toString(),
          );
        const taken = await again({ id: "r2" });
        assert.equal(taken.status, 409);
        assert.match(taken.text, /id="error-id" class="error">Name: a rollout named r2 exists already/);
        const unpublished = await again({ release: `${NAME}/9.9.9`, id: "r3" });
        assert.equal(unpublished.status, 400);
        assert.match(
          unpublished.text,
          /id="error-release" class="error">Version to roll out: EOS\.x86_64-AB 9\.9\.9 is not published on this server/,
        );
        assert.deepEqual(await rolloutIds(), ["r1", "r2"]);
      });

      test("the images page lists both versions with their sizes", async (t) => {
        if (why()) return t.skip(why());
        const { page } = ops;
        await page.goto(`${fleet.server.url}/ui/images`);
        const text = (await page.locator("main table").textContent()) ?? "";
        assert.match(text, /2\.0\.0 \(current\)/);
        assert.match(text, /1\.0\.0/);
        assert.match(text, /KiB|MiB/);
      });

      test("on a phone's width the pages do not scroll sideways (wide tables scroll inside themselves)", async (t) => {
        if (why()) return t.skip(why());
        const { page } = ops;
        await page.setViewportSize({ width: 390, height: 800 });
        for (const path of ["/ui", "/ui/devices", "/ui/rollouts", "/ui/rollouts/new", "/ui/images"]) {
          await page.goto(`${fleet.server.url}${path}`);
          const width = await page.evaluate(
            () =>
              (globalThis as unknown as { document: { documentElement: { scrollWidth: number } } }).document
                .documentElement.scrollWidth,
          );
          assert.ok(width <= 390, `${path}: ${width} px wide`);
        }
        await page.setViewportSize({ width: 1100, height: 900 });
      });

      test("signing out ends the session on the server", async (t) => {
        if (why()) return t.skip(why());
        const { page, context } = ops;
        const [cookie] = await context.cookies();
        await page.goto(`${fleet.server.url}/ui`);
        await page.getByRole("button", { name: "Sign out" }).click();
        await page.getByText("You have signed out.").waitFor();
        const replay = await call("GET", "/ui", { headers: { cookie: `${cookie?.name}=${cookie?.value}` } });
        assert.equal(replay.status, 303);
        assert.equal(replay.headers.location, "/ui/login");
        await context.close();
      });
    });

    describe("/health and /metrics", () => {
      test("/health checks the database and the image store, without a token", async (t) => {
        if (why()) return t.skip(why());
        const r = await call("GET", "/health");
        assert.equal(r.status, 200);
        assert.deepEqual(JSON.parse(r.text), {
          status: "ok",
          images: 1,
          database: "ok",
          store: "ok",
          storage: "directory",
        });
      });

      test("/health answers 503 naming the image store when its directory is gone", async (t) => {
        if (why()) return t.skip(why());
        await rename(world.imagesDir, `${world.imagesDir}.away`);
        try {
          const r = await call("GET", "/health");
          assert.equal(r.status, 503);
          assert.deepEqual(JSON.parse(r.text), {
            status: "unavailable",
            images: 0,
            database: "ok",
            store: "failed",
            storage: "directory",
          });
        } finally {
          await rename(`${world.imagesDir}.away`, world.imagesDir);
        }
        assert.equal((await call("GET", "/health")).status, 200);
      });

      test("/metrics needs an admin token and speaks Prometheus's text format", async (t) => {
        if (why()) return t.skip(why());
        assert.equal((await call("GET", "/metrics")).status, 401);
        const r = await call("GET", "/metrics", { token: fleet.env.VIEWER as string });
        assert.equal(r.status, 200);
        assert.match(String(r.headers["content-type"]), /^text\/plain; version=0\.0\.4/);
        assert.match(r.text, /^# TYPE eos_http_requests_total counter$/m);
        assert.match(r.text, /^eos_http_requests_total\{route="\/v1\/events",status="200"\} [1-9]/m);
        assert.match(r.text, /^eos_http_requests_total\{route="\/ui\/rollouts\/:id",status="403"\} [1-9]/m);
        assert.match(r.text, /^eos_devices\{state="committed"\} 1$/m);
        assert.match(r.text, /^eos_devices_by_version\{image="EOS.x86_64-AB",version="1.0.0"\} 2$/m);
        assert.match(r.text, /^eos_rollout_state\{rollout="r1",image="EOS.x86_64-AB",state="paused"\} 1$/m);
        assert.match(
          r.text,
          /^eos_http_response_bytes_total\{route="\/v1\/images\/:name\/root"\} |^eos_http_response_bytes_total\{route="\/ui"\} [1-9]/m,
        );
      });
    });
  });
}
