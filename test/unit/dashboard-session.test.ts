import { test } from "node:test";
import assert from "node:assert/strict";
import {
  clearedCookie,
  cookieValue,
  MAX_SESSIONS,
  postAllowed,
  sameOrigin,
  sameSecret,
  SESSION_IDLE_MS,
  SESSION_MAX_MS,
  Sessions,
  sessionCookie,
} from "../../src/core/fleet/ui/session.ts";

function table() {
  let n = 0;
  const clock = { t: 1_000_000 };
  const sessions = new Sessions(
    () => `id${String(++n).padStart(40, "0")}`,
    () => clock.t,
  );
  return { sessions, clock };
}
const who = { name: "ops", role: "operator" as const };
const HOST = { host: "fleet.example:8443" };

test("a session lives while used, ends after its idle time and after its lifetime however busy", () => {
  const { sessions, clock } = table();
  const s = sessions.open("eosadm_x", who);
  assert.notEqual(s.id, s.csrf);
  clock.t += SESSION_IDLE_MS - 1;
  assert.equal(sessions.get(s.id)?.name, "ops");
  clock.t += SESSION_IDLE_MS - 1;
  assert.ok(sessions.get(s.id), "each use restarts the idle clock");
  clock.t += SESSION_IDLE_MS + 1;
  assert.equal(sessions.get(s.id), undefined);
  const busy = sessions.open("eosadm_x", who);
  for (let used = 0; used < SESSION_MAX_MS; used += SESSION_IDLE_MS / 2) {
    clock.t += SESSION_IDLE_MS / 2;
    sessions.get(busy.id);
  }
  clock.t += 1;
  assert.equal(sessions.get(busy.id), undefined);
});

test("closing ends a session; unknown and malformed ids find none; the table is bounded", () => {
  const { sessions } = table();
  const s = sessions.open("eosadm_x", who);
  sessions.close(s.id);
  assert.equal(sessions.get(s.id), undefined);
  assert.equal(sessions.get(undefined), undefined);
  assert.equal(sessions.get("short"), undefined);
  const first = sessions.open("eosadm_x", who);
  for (let i = 0; i < MAX_SESSIONS + 5; i++) sessions.open("eosadm_x", who);
  assert.equal(sessions.size, MAX_SESSIONS);
  assert.equal(sessions.get(first.id), undefined, "the oldest session made room");
});

test("the cookie is HttpOnly and SameSite=Strict, Secure with the __Host- prefix under TLS", () => {
  assert.equal(
    sessionCookie("abc", true),
    `__Host-eos_session=abc; Path=/; HttpOnly; SameSite=Strict; Max-Age=${SESSION_MAX_MS / 1000}; Secure`,
  );
  assert.doesNotMatch(sessionCookie("abc", false), /Secure/);
  assert.match(sessionCookie("abc", false), /^eos_session=abc; .*HttpOnly; SameSite=Strict/);
  assert.match(clearedCookie(true), /Max-Age=0; Secure$/);
  assert.equal(cookieValue("a=1; __Host-eos_session=xyz; b=2", "__Host-eos_session"), "xyz");
  assert.equal(cookieValue("eos_session_other=1", "eos_session"), undefined);
});

test("a POST needs this server's Origin (or Referer) and the session's CSRF token", () => {
  const { sessions } = table();
  const s = sessions.open("eosadm_x", who);
  const good = { origin: "https://fleet.example:8443", ...HOST };
  const form = (csrf?: string) => new URLSearchParams(csrf === undefined ? {} : { csrf });
  assert.deepEqual(postAllowed(s, form(s.csrf), good, true), { ok: true });
  assert.equal(postAllowed(s, form(), good, true).ok, false);
  assert.equal(postAllowed(s, form(`${s.csrf.slice(0, -1)}x`), good, true).ok, false);
  assert.equal(postAllowed(s, form(""), good, true).ok, false);
  assert.equal(postAllowed(s, form(s.csrf), { ...good, origin: "https://evil.example" }, true).ok, false);
  assert.equal(
    postAllowed(s, form(s.csrf), { ...good, origin: "http://fleet.example:8443" }, true).ok,
    false,
  );
  assert.equal(sameOrigin({ referer: "https://fleet.example:8443/ui/rollouts", ...HOST }, true), true);
  assert.equal(sameOrigin({ referer: "https://evil.example/ui", ...HOST }, true), false);
  assert.equal(sameOrigin({ ...HOST }, true), false, "neither header: refused");
  assert.equal(sameOrigin({ origin: "https://fleet.example:8443" }, true), false, "no Host: refused");
  assert.equal(sameSecret("abc", "abc"), true);
  assert.equal(sameSecret("abc", "abd"), false);
  assert.equal(sameSecret("", ""), false);
});
