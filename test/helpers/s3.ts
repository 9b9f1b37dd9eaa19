/**
 * An S3-compatible server for tests: s3rver (npm; Debian has no S3 server)
 * on 127.0.0.1 and a free port, its data in a temporary directory, behind a
 * small HTTP proxy that records every request (method, key, Range, query) in
 * order, so a test can say what was uploaded when and how it was read.
 * s3rver checks the access key id (S3RVER) but not SigV4 signatures.
 */
import { request, createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import S3rver from "s3rver";
import { ListObjectsV2Command, S3Client } from "@aws-sdk/client-s3";

export const S3_KEY = { AWS_ACCESS_KEY_ID: "S3RVER", AWS_SECRET_ACCESS_KEY: "S3RVER" };

export interface S3Call {
  method: string;
  /** The key, without the bucket (path-style addressing). */
  key: string;
  range: string | undefined;
  presigned: boolean;
  status: number;
}

export interface TestS3 {
  /** The proxy's endpoint, what servers under test use. */
  endpoint: string;
  calls: S3Call[];
  client: S3Client;
  keys(bucket: string, prefix?: string): Promise<string[]>;
  /** s3rver's own endpoint, without the proxy. */
  storeEndpoint: string;
  /** Stops s3rver: its endpoint then refuses connections, as a store that is down. */
  stopStore(): Promise<void>;
  close(): Promise<void>;
}

export async function startS3(directory: string, buckets: string[]): Promise<TestS3> {
  const store = new S3rver({
    address: "127.0.0.1",
    port: 0,
    silent: true,
    directory,
    configureBuckets: buckets.map((name) => ({ name })),
  });
  const { port: storePort } = (await store.run()) as AddressInfo;
  let storeUp = true;
  const calls: S3Call[] = [];
  const proxy: Server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    const call: S3Call = {
      method: req.method ?? "",
      key: decodeURIComponent(url.pathname.replace(/^\/[^/]+\/?/, "")),
      range: req.headers.range,
      presigned: url.searchParams.has("X-Amz-Signature"),
      status: 0,
    };
    calls.push(call);
    const upstream = request(
      { host: "127.0.0.1", port: storePort, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        call.status = answer.statusCode ?? 0;
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    upstream.on("error", () => res.destroy());
    req.pipe(upstream);
  });
  proxy.listen(0, "127.0.0.1");
  await new Promise((resolve) => proxy.once("listening", resolve));
  const endpoint = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
  const client = new S3Client({
    endpoint: `http://127.0.0.1:${storePort}`,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: { accessKeyId: S3_KEY.AWS_ACCESS_KEY_ID, secretAccessKey: S3_KEY.AWS_SECRET_ACCESS_KEY },
  });
  return {
    endpoint,
    storeEndpoint: `http://127.0.0.1:${storePort}`,
    calls,
    client,
    async keys(bucket, prefix = "") {
      const out: string[] = [];
      let token: string | undefined;
      do {
        const page = await client.send(
          new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }),
        );
        for (const o of page.Contents ?? []) if (o.Key) out.push(o.Key);
        token = page.IsTruncated ? page.NextContinuationToken : undefined;
      } while (token);
      return out.sort();
    },
    async stopStore() {
      if (!storeUp) return;
      storeUp = false;
      await store.close();
    },
    async close() {
      client.destroy();
      proxy.closeAllConnections();
      await new Promise((resolve) => proxy.close(resolve));
      if (storeUp) await store.close();
    },
  };
}
