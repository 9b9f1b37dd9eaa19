/**
 * How the update server answers: a refusal with its status (and headers
 * such as Retry-After), and a JSON body. Shared by the image routes and the
 * control plane's routes.
 */
import type { ServerResponse } from "node:http";

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
    /** A typed error's stable code and hint, for a client to act on. */
    readonly detail: { code?: string; hint?: string } = {},
  ) {
    super(message);
  }
}

export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): number {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
  return Buffer.byteLength(text);
}
