/**
 * The admin API from the command line's side: `os-update-server devices …`
 * talks to a running server as an operator would, with an admin token, so
 * the CLI sees exactly what the API allows that token.
 */
import { readFile } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { EosError } from "../../../core/errors.ts";
import { readBounded } from "../../read-bounded.ts";

export interface AdminClientOptions {
  /** The server's base URL (default: $EOS_SERVER_URL, else http://127.0.0.1:8080). */
  server?: string | undefined;
  /** A file holding the admin token (default: $EOS_ADMIN_TOKEN holds the token itself). */
  tokenFile?: string | undefined;
  ca?: string | undefined;
  env: NodeJS.ProcessEnv;
}

export interface AdminClient {
  get(path: string): Promise<unknown>;
  send(method: "PUT" | "POST" | "DELETE", path: string, body?: unknown): Promise<unknown>;
}

export async function adminClient(o: AdminClientOptions): Promise<AdminClient> {
  const base = (o.server ?? o.env.EOS_SERVER_URL ?? "http://127.0.0.1:8080").replace(/\/+$/, "");
  if (!/^https?:\/\//.test(base)) throw new EosError("USAGE", `--server: not an http(s) URL: ${base}`);
  const token = o.tokenFile
    ? (
        await readFile(o.tokenFile, "utf8").catch(() => {
          throw new EosError("USAGE", `--token-file: cannot read ${o.tokenFile}`);
        })
      ).trim()
    : o.env.EOS_ADMIN_TOKEN;
  if (!token)
    throw new EosError("USAGE", "no admin token", {
      hint: "pass --token-file FILE or set EOS_ADMIN_TOKEN (os-update-server admin-token add NAME makes one)",
    });
  const ca = o.ca ? await readFile(o.ca) : undefined;

  async function call(method: string, path: string, body?: unknown): Promise<unknown> {
    const url = new URL(`${base}${path}`);
    const text = body === undefined ? undefined : JSON.stringify(body);
    const request = url.protocol === "https:" ? httpsRequest : httpRequest;
    const res = await new Promise<import("node:http").IncomingMessage>((resolve, reject) => {
      const req = request(
        url,
        {
          method,
          agent: false,
          ...(ca ? { ca } : {}),
          headers: {
            authorization: `Bearer ${token}`,
            ...(text === undefined
              ? {}
              : { "content-type": "application/json", "content-length": Buffer.byteLength(text) }),
          },
        },
        resolve,
      );
      req.setTimeout(30_000, () => req.destroy(new Error("no answer within 30 s")));
      req.on("error", (e: NodeJS.ErrnoException) =>
        reject(
          new EosError("NETWORK", `${base}: ${e.code ?? e.message}`, {
            hint: "is the server running? --server URL",
          }),
        ),
      );
      req.end(text);
    });
    const bytes = await readBounded(res, 64 << 20, `${method} ${path}`, "HTTP");
    let answer: { error?: string; code?: string; hint?: string } & Record<string, unknown>;
    try {
      answer = JSON.parse(bytes.toString("utf8")) as typeof answer;
    } catch {
      throw new EosError("HTTP", `${method} ${path}: HTTP ${res.statusCode}, not JSON`);
    }
    if ((res.statusCode ?? 500) >= 400) {
      const code =
        res.statusCode === 401 || res.statusCode === 403
          ? "AUTH"
          : res.statusCode === 404
            ? "NOT_FOUND"
            : res.statusCode === 400
              ? "USAGE"
              : res.statusCode === 409
                ? "REFUSED"
                : "HTTP";
      throw new EosError(
        code,
        `${answer.error ?? `HTTP ${res.statusCode}`}`,
        answer.hint ? { hint: answer.hint } : {},
      );
    }
    return answer;
  }

  return { get: (path) => call("GET", path), send: (method, path, body) => call(method, path, body) };
}
