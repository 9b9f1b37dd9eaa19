/**
 * An IMDSv2 client: a session token from PUT /latest/api/token, then GETs
 * that carry it (EC2 answers a GET without it with 401 when IMDSv2 is
 * required). Every request has its own timeout and the whole wait for the
 * service a deadline, because the same image boots where no metadata
 * service exists (KVM, a board): there the client must give up in bounded
 * time and say so, not hold up the boot.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { EosError } from "../../core/errors.ts";
import { IMDS_TOKEN_HEADER, IMDS_TOKEN_PATH, IMDS_TOKEN_TTL_HEADER } from "../../core/cloud/imds.ts";

export interface ImdsClientOptions {
  /** http://169.254.169.254, or a test server's. */
  baseUrl: string;
  /** Each request (connect, answer and body) ends after this. */
  requestTimeoutMs: number;
  /** How long to keep trying for a first answer (the network may still be coming up). */
  waitMs: number;
  /** Token lifetime asked for; one boot's run needs seconds. */
  tokenTtlSeconds?: number;
  signal?: AbortSignal;
  /** Progress lines (each retry's reason). */
  log?: (line: string) => void;
}

/** No metadata service answered within the wait: not on EC2, or IMDS is off. */
export class ImdsUnavailable extends EosError {
  constructor(message: string) {
    super("NETWORK", message);
    this.name = "ImdsUnavailable";
  }
}

/** IMDS answers are a few hundred bytes; a key list or key never near this. */
const MAX_ANSWER = 64 * 1024;
/** GETs after the token: the service answered once, so a few quick tries suffice. */
const GET_ATTEMPTS = 3;

interface Answer {
  status: number;
  body: string;
}

async function readCapped(response: Response, what: string): Promise<string> {
  const reader = response.body?.getReader();
  if (!reader) return "";
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > MAX_ANSWER) {
      await reader.cancel().catch(() => undefined);
      throw new EosError("HTTP", `${what}: answer larger than ${MAX_ANSWER} bytes`);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function reason(error: unknown): string {
  const e = error as { name?: string; message?: string; cause?: { code?: string; message?: string } };
  if (e.name === "TimeoutError" || e.name === "AbortError") return "no answer within the timeout";
  return e.cause?.code ?? e.cause?.message ?? e.message ?? String(error);
}

export class ImdsClient {
  private token: string | undefined;
  private readonly o: ImdsClientOptions;

  constructor(options: ImdsClientOptions) {
    this.o = options;
  }

  /** One request with its own timeout (and the caller's abort). */
  private async request(
    method: "GET" | "PUT",
    path: string,
    headers: Record<string, string>,
  ): Promise<Answer> {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.o.requestTimeoutMs);
    const onAbort = () => controller.abort();
    this.o.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const response = await fetch(`${this.o.baseUrl}${path}`, {
        method,
        headers,
        signal: controller.signal,
        redirect: "error",
      });
      return { status: response.status, body: await readCapped(response, `IMDS ${path}`) };
    } finally {
      clearTimeout(timer);
      this.o.signal?.removeEventListener("abort", onAbort);
    }
  }

  private checkAborted(): void {
    if (this.o.signal?.aborted) throw new EosError("INTERRUPTED", "stopped while asking IMDS");
  }

  /**
   * The session token, retried until the wait runs out while nothing
   * answers (network down, no route, timeouts, 5xx); a refusal (4xx) is an
   * answer and ends at once.
   */
  async session(): Promise<string> {
    if (this.token) return this.token;
    const deadline = performance.now() + this.o.waitMs;
    const ttl = String(this.o.tokenTtlSeconds ?? 300);
    let delay = 250;
    let last = "";
    for (let attempt = 1; ; attempt++) {
      this.checkAborted();
      try {
        const a = await this.request("PUT", IMDS_TOKEN_PATH, { [IMDS_TOKEN_TTL_HEADER]: ttl });
        if (a.status === 200) {
          const token = a.body.trim();
          if (!/^[\x21-\x7e]{1,1024}$/.test(token))
            throw new EosError("HTTP", `IMDS ${IMDS_TOKEN_PATH}: the token is empty or not printable`);
          this.token = token;
          return token;
        }
        if (a.status < 500)
          throw new EosError(
            "HTTP",
            `IMDS ${IMDS_TOKEN_PATH}: HTTP ${a.status} to the IMDSv2 token request`,
            {
              hint:
                a.status === 403
                  ? "the instance's metadata service is disabled (aws ec2 modify-instance-metadata-options --http-endpoint enabled)"
                  : "the service does not speak IMDSv2",
            },
          );
        last = `HTTP ${a.status}`;
      } catch (error) {
        if (error instanceof EosError) throw error;
        last = reason(error);
      }
      this.checkAborted();
      const left = deadline - performance.now();
      if (left <= 0)
        throw new ImdsUnavailable(
          `no instance metadata service answered at ${this.o.baseUrl} within ${Math.round(this.o.waitMs / 1000)} s (${attempt} tries, last: ${last})`,
        );
      this.o.log?.(`IMDS not answering yet (${last}); trying again`);
      await sleep(Math.min(delay, left));
      delay = Math.min(delay * 2, 4000);
    }
  }

  /**
   * GET with the token: the body on 200, undefined on 404 (the item does not
   * exist for this instance). A 401 means the token lapsed: one new token.
   */
  async get(path: string): Promise<string | undefined> {
    let renewed = false;
    let last = "";
    for (let attempt = 1; attempt <= GET_ATTEMPTS; attempt++) {
      this.checkAborted();
      const token = await this.session();
      let a: Answer;
      try {
        a = await this.request("GET", path, { [IMDS_TOKEN_HEADER]: token });
      } catch (error) {
        if (error instanceof EosError) throw error;
        last = reason(error);
        await sleep(250 * attempt);
        continue;
      }
      if (a.status === 200) return a.body;
      if (a.status === 404) return undefined;
      if (a.status === 401 && !renewed) {
        renewed = true;
        this.token = undefined;
        attempt--;
        continue;
      }
      if (a.status < 500) throw new EosError("HTTP", `IMDS ${path}: HTTP ${a.status}`);
      last = `HTTP ${a.status}`;
      await sleep(250 * attempt);
    }
    throw new EosError("NETWORK", `IMDS ${path}: no answer after ${GET_ATTEMPTS} tries (last: ${last})`);
  }
}
