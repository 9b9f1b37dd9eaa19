/**
 * An HTTP server that serves whatever it is given, as a compromised,
 * misconfigured or failing server or origin would: optionally trickling a
 * body (a few bytes at a time after the first ones), ignoring Range, and
 * recording every request.
 */
import { createServer, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export interface Trickle {
  /** Bytes sent at full speed before the trickle starts. */
  after: number;
  bytesPerTick: number;
  tickMs: number;
}

export interface HostileServer {
  url: string;
  requests: string[];
  server: Server;
  close(): Promise<void>;
}

export async function hostileServer(
  files: Map<string, Buffer>,
  options: { trickle?: Map<string, Trickle> } = {},
): Promise<HostileServer> {
  const requests: string[] = [];
  const open = new Set<ServerResponse>();
  const server = createServer((req, res) => {
    const path = (req.url ?? "").split("?")[0] ?? "";
    requests.push(req.url ?? "");
    const body = files.get(path);
    if (!body) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-length": body.length });
    const trickle = options.trickle?.get(path);
    if (!trickle) {
      res.end(body);
      return;
    }
    open.add(res);
    res.write(body.subarray(0, trickle.after));
    let at = trickle.after;
    const timer = setInterval(() => {
      if (at >= body.length || res.destroyed) {
        clearInterval(timer);
        open.delete(res);
        if (!res.destroyed) res.end();
        return;
      }
      res.write(body.subarray(at, at + trickle.bytesPerTick));
      at += trickle.bytesPerTick;
    }, trickle.tickMs);
    res.on("close", () => {
      clearInterval(timer);
      open.delete(res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    server,
    close: () =>
      new Promise((resolve) => {
        for (const res of open) res.destroy();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
