/**
 * The dashboard's sessions, kept on the server: a browser holds only an
 * opaque id in an HttpOnly, SameSite=Strict cookie (Secure under TLS). Each
 * session has its own CSRF token that every form carries, an idle timeout
 * and an absolute lifetime. The table is bounded: past MAX_SESSIONS the
 * oldest session is dropped. Randomness and the clock come in from outside.
 */
import type { Role } from "../admin.ts";

export const SESSION_IDLE_MS = 30 * 60 * 1000;
export const SESSION_MAX_MS = 8 * 60 * 60 * 1000;
export const MAX_SESSIONS = 1000;
const ID = /^[A-Za-z0-9_-]{32,128}$/;

export interface Session {
  id: string;
  csrf: string;
  /** The admin token it was opened with: checked again on every request, so revoking it ends the session. */
  token: string;
  name: string;
  role: Role;
  created: number;
  seen: number;
}

export class Sessions {
  private readonly table = new Map<string, Session>();

  constructor(
    private readonly random: () => string,
    private readonly now: () => number,
  ) {}

  open(token: string, who: { name: string; role: Role }): Session {
    const at = this.now();
    this.sweep(at);
    while (this.table.size >= MAX_SESSIONS) {
      const oldest = this.table.keys().next().value;
      if (oldest === undefined) break;
      this.table.delete(oldest);
    }
    const session: Session = { id: this.random(), csrf: this.random(), token, ...who, created: at, seen: at };
    this.table.set(session.id, session);
    return session;
  }

  /** The live session for a cookie's id, its idle clock restarted; undefined if unknown or expired. */
  get(id: string | undefined): Session | undefined {
    if (id === undefined || !ID.test(id)) return undefined;
    const session = this.table.get(id);
    if (!session) return undefined;
    const at = this.now();
    if (expired(session, at)) {
      this.table.delete(id);
      return undefined;
    }
    session.seen = at;
    return session;
  }

  close(id: string): void {
    this.table.delete(id);
  }

  get size(): number {
    return this.table.size;
  }

  private sweep(at: number): void {
    for (const [id, s] of this.table) if (expired(s, at)) this.table.delete(id);
  }
}

export function expired(s: Pick<Session, "created" | "seen">, at: number): boolean {
  return at - s.seen > SESSION_IDLE_MS || at - s.created > SESSION_MAX_MS;
}

/** The cookie's name: under TLS the __Host- prefix makes the browser insist on Secure, Path=/ and no Domain. */
export function cookieName(secure: boolean): string {
  return secure ? "__Host-eos_session" : "eos_session";
}

export function sessionCookie(id: string, secure: boolean): string {
  const attrs = [`${cookieName(secure)}=${id}`, "Path=/", "HttpOnly", "SameSite=Strict"];
  attrs.push(`Max-Age=${SESSION_MAX_MS / 1000}`);
  if (secure) attrs.push("Secure");
  return attrs.join("; ");
}

export function clearedCookie(secure: boolean): string {
  return `${cookieName(secure)}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0${secure ? "; Secure" : ""}`;
}

export function cookieValue(header: string | undefined, name: string): string | undefined {
  for (const part of (header ?? "").split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

/** Equal strings, compared in time that does not depend on where they first differ. */
export function sameSecret(a: string, b: string): boolean {
  if (a.length !== b.length || a.length === 0) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

/**
 * A state-changing request must come from a page of this server: its Origin
 * (or, from a browser that sends none, its Referer) must be this origin.
 * Neither: refused, a browser always sends one of them on a form POST.
 */
export function sameOrigin(
  headers: { origin?: string | undefined; referer?: string | undefined; host?: string | undefined },
  secure: boolean,
): boolean {
  if (!headers.host) return false;
  const expected = `${secure ? "https" : "http"}://${headers.host}`.toLowerCase();
  if (headers.origin !== undefined) return headers.origin.toLowerCase() === expected;
  if (headers.referer === undefined) return false;
  try {
    return new URL(headers.referer).origin.toLowerCase() === expected;
  } catch {
    return false;
  }
}

/** The checks of a POST: same origin and the session's CSRF token in the form. */
export function postAllowed(
  session: Session,
  form: URLSearchParams,
  headers: Parameters<typeof sameOrigin>[0],
  secure: boolean,
): { ok: true } | { ok: false; why: string } {
  if (!sameOrigin(headers, secure))
    return { ok: false, why: "the request did not come from this server's page" };
  const csrf = form.get("csrf");
  if (csrf === null || !sameSecret(csrf, session.csrf))
    return { ok: false, why: "the form's CSRF token is missing or wrong: reload the page" };
  return { ok: true };
}
