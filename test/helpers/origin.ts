/** An image origin on loopback: a static file server with ETag/Last-Modified and fault injection. */
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join, normalize } from "node:path";

export type Fault = "404" | "500" | "truncate";

export interface Origin {
  url: string;
  requests: string[];
  faults: Map<string, Fault>;
  close(): Promise<void>;
}

export async function startOrigin(dir: string): Promise<Origin> {
  const requests: string[] = [];
  const faults = new Map<string, Fault>();
  const server: Server = createServer((req, res) => {
    void (async () => {
      const path = normalize(decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname));
      requests.push(`${req.method} ${path}`);
      const fault = faults.get(path);
      if (fault === "404" || fault === "500") {
        res.writeHead(Number(fault)).end();
        return;
      }
      const file = join(dir, path);
      const st = await stat(file).catch(() => undefined);
      if (!st?.isFile()) {
        res.writeHead(404).end();
        return;
      }
      const etag = `"${st.size}-${Math.floor(st.mtimeMs)}"`;
      const lastModified = st.mtime.toUTCString();
      if (req.headers["if-none-match"] === etag) {
        res.writeHead(304, { etag, "last-modified": lastModified }).end();
        return;
      }
      res.writeHead(200, { etag, "last-modified": lastModified, "content-length": st.size });
      if (fault === "truncate") {
        createReadStream(file, { end: Math.floor(st.size / 2) })
          .on("data", (c) => res.write(c))
          .on("end", () => res.destroy());
        return;
      }
      createReadStream(file).pipe(res);
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    faults,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
