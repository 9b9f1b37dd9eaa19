/** A TCP proxy that breaks one connection off after it has carried `cutAfter` bytes to the client. */
import { createConnection, createServer, type Server } from "node:net";
import type { AddressInfo } from "node:net";

export interface FlakyProxy {
  port: number;
  cuts: number;
  close(): Promise<void>;
}

export async function startFlakyProxy(
  targetPort: number,
  cutAfter: number,
  times = 1,
  /** Bytes per second towards the client; 0 = as fast as possible. */
  rate = 0,
  /** Told the bytes carried to clients so far, over all connections (after each piece). */
  onCarried?: (total: number) => void,
): Promise<FlakyProxy> {
  let total = 0;
  const proxy: FlakyProxy = { port: 0, cuts: 0, close: async () => undefined };
  const sockets = new Set<import("node:net").Socket>();
  const server: Server = createServer((client) => {
    const upstream = createConnection({ port: targetPort, host: "127.0.0.1" });
    sockets.add(client).add(upstream);
    client.on("close", () => sockets.delete(client));
    upstream.on("close", () => sockets.delete(upstream));
    let carried = 0;
    client.on("data", (d) => upstream.write(d));
    upstream.on("data", (d: Buffer) => {
      carried += d.length;
      if (proxy.cuts < times && carried > cutAfter) {
        proxy.cuts++;
        client.destroy();
        upstream.destroy();
        return;
      }
      total += d.length;
      onCarried?.(total);
      if (rate > 0) {
        // Pause the server side long enough to hold the average rate.
        upstream.pause();
        client.write(d);
        setTimeout(() => upstream.resume(), (d.length / rate) * 1000);
      } else {
        client.write(d);
      }
    });
    client.on("end", () => upstream.end());
    upstream.on("end", () => client.end());
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  proxy.port = (server.address() as AddressInfo).port;
  // Closing also ends the connections still open, so no stream outlives the proxy.
  proxy.close = () =>
    new Promise((resolve) => {
      for (const socket of sockets) socket.destroy();
      server.close(() => resolve());
    });
  return proxy;
}
