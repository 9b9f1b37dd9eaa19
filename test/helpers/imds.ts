/**
 * A local IMDSv2 responder for the EC2 tests: PUT /latest/api/token (with
 * the TTL header) hands out a token, and every GET without that token gets
 * 401, as EC2 does when IMDSv2 is required. The key list, the keys and the
 * host name are the test's; `hang` accepts connections and never answers.
 * The vm test reaches it from the guest through QEMU's guestfwd and
 * imds-proxy.mjs.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { randomBytes } from "node:crypto";

export interface ImdsContent {
  /** undefined: 404 for /latest/meta-data/public-keys/ (no key pair). */
  keys?: Array<{ name: string; key: string }>;
  /** undefined: 404. */
  hostname?: string;
  /** Never answer (the connection stays open). */
  hang?: boolean;
}

export interface ImdsRequest {
  method: string;
  path: string;
  status: number;
  token: boolean;
}

export interface ImdsServer {
  url: string;
  port: number;
  requests: ImdsRequest[];
  content: ImdsContent;
  close(): Promise<void>;
}

export async function startImds(content: ImdsContent): Promise<ImdsServer> {
  const token = randomBytes(24).toString("base64url");
  const requests: ImdsRequest[] = [];
  const sockets = new Set<Socket>();
  const state: ImdsContent = content;
  const answer = (req: IncomingMessage, res: ServerResponse, status: number, body = "") => {
    requests.push({
      method: req.method ?? "",
      path: req.url ?? "",
      status,
      token: req.headers["x-aws-ec2-metadata-token"] === token,
    });
    res.writeHead(status, { "content-type": "text/plain" }).end(body);
  };
  const server = createServer((req, res) => {
    if (state.hang) return;
    const path = req.url ?? "";
    if (path === "/latest/api/token") {
      if (req.method !== "PUT") return answer(req, res, 405);
      const ttl = Number(req.headers["x-aws-ec2-metadata-token-ttl-seconds"]);
      if (!Number.isInteger(ttl) || ttl < 1 || ttl > 21600) return answer(req, res, 400);
      return answer(req, res, 200, token);
    }
    if (req.method !== "GET") return answer(req, res, 405);
    if (req.headers["x-aws-ec2-metadata-token"] !== token) return answer(req, res, 401);
    const keys = state.keys;
    if (path === "/latest/meta-data/hostname")
      return state.hostname === undefined ? answer(req, res, 404) : answer(req, res, 200, state.hostname);
    if (path === "/latest/meta-data/public-keys/")
      return keys === undefined
        ? answer(req, res, 404)
        : answer(req, res, 200, keys.map((k, i) => `${i}=${k.name}`).join("\n"));
    const m = /^\/latest\/meta-data\/public-keys\/(\d+)\/openssh-key$/.exec(path);
    const entry = m && keys ? keys[Number(m[1])] : undefined;
    return entry ? answer(req, res, 200, entry.key) : answer(req, res, 404);
  });
  server.on("connection", (s: Socket) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    requests,
    content: state,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** An OpenSSH ed25519 public key line with random key bytes (well-formed, not usable). */
export function fakeEd25519Key(comment: string): string {
  const type = Buffer.from("ssh-ed25519");
  const len = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n);
    return b;
  };
  const blob = Buffer.concat([len(type.length), type, len(32), randomBytes(32)]);
  return `ssh-ed25519 ${blob.toString("base64")} ${comment}`;
}
