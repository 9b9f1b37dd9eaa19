/**
 * An S3-compatible server for tests: s3rver (npm; Debian has no S3 server)
 * on 127.0.0.1 and a free port, its data in a temporary directory, behind a
 * small HTTP proxy that records every request (method, key, Range, query) in
 * order, so a test can say what was uploaded when and how it was read.
 * s3rver checks the access key id (S3RVER) but not SigV4 signatures.
 *
 * s3rver 3.7.1 takes multipart uploads (create, parts, complete) but not
 * AbortMultipartUpload (405) nor ListMultipartUploads: the proxy answers the
 * abort itself by deleting the upload from s3rver's directory, where
 * `pendingUploads` looks. `refuse` makes the proxy answer chosen requests
 * with a 500, as a store that fails part way; `delay` holds them a while.
 */
import { request, createServer, type ClientRequest, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { readFile, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import S3rver from "s3rver";
import { ListObjectsV2Command, S3Client } from "@aws-sdk/client-s3";

export const S3_KEY = { AWS_ACCESS_KEY_ID: "S3RVER", AWS_SECRET_ACCESS_KEY: "S3RVER" };

export interface S3Call {
  method: string;
  /** The key, without the bucket (path-style addressing). */
  key: string;
  range: string | undefined;
  presigned: boolean;
  /** The query string without its signature, e.g. "partNumber=2&uploadId=…", "uploads=". */
  query: string;
  status: number;
}

export interface TestS3 {
  /** The proxy's endpoint, what servers under test use. */
  endpoint: string;
  calls: S3Call[];
  client: S3Client;
  keys(bucket: string, prefix?: string): Promise<string[]>;
  /** Requests for which this says true are answered 500 InternalError, never reaching s3rver. */
  refuse: ((call: S3Call) => boolean) | undefined;
  /** Milliseconds the proxy holds a request before passing it on (a slow link), by request. */
  delay: ((call: S3Call) => number) | undefined;
  /** Multipart uploads created and neither completed nor aborted: ids of the keys. */
  pendingUploads(bucket: string): Promise<Array<{ id: string; key: string }>>;
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
  const uploadsDir = (bucket: string) => join(directory, bucket, "._S3rver_uploads");
  /** Requests on their way to s3rver, by upload id: an abort waits for them (s3rver writes a part's file as it arrives). */
  const inflight = new Map<string, Set<ClientRequest>>();
  /**
   * Uploads aborted through the proxy. A part s3rver was still taking in when its client gave up
   * can write the upload's directory again after the abort removed it; S3 keeps nothing of an
   * aborted upload, so `pendingUploads` does not count those.
   */
  const aborted = new Set<string>();
  const helper = {
    refuse: undefined as ((call: S3Call) => boolean) | undefined,
    delay: undefined as ((call: S3Call) => number) | undefined,
  };
  const proxy: Server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    const query = new URLSearchParams(
      [...url.searchParams].filter(([k]) => !k.startsWith("X-Amz-") && k !== "x-id"),
    );
    const call: S3Call = {
      method: req.method ?? "",
      key: decodeURIComponent(url.pathname.replace(/^\/[^/]+\/?/, "")),
      range: req.headers.range,
      presigned: url.searchParams.has("X-Amz-Signature"),
      query: query.toString(),
      status: 0,
    };
    calls.push(call);
    const answer = (status: number, body = "") => {
      call.status = status;
      req.resume();
      req.once("end", () => res.writeHead(status, { "content-type": "application/xml" }).end(body));
    };
    if (helper.refuse?.(call)) {
      const error = "<Error><Code>InternalError</Code><Message>refused by the test</Message></Error>";
      return answer(500, `<?xml version="1.0" encoding="UTF-8"?>\n${error}`);
    }
    const uploadId = url.searchParams.get("uploadId");
    if (req.method === "DELETE" && uploadId) {
      const bucket = url.pathname.split("/")[1] as string;
      const waiting = [...(inflight.get(uploadId) ?? [])].map(
        (r) => new Promise((resolve) => (r.closed ? resolve(undefined) : r.once("close", resolve))),
      );
      aborted.add(uploadId);
      void Promise.all(waiting)
        .then(() => rm(join(uploadsDir(bucket), uploadId), { recursive: true, force: true }))
        .then(() => answer(204));
      return;
    }
    const forward = () => {
      // A client that gave up while its request was held: nothing to send on.
      if (req.destroyed || req.socket.destroyed) return res.destroy();
      const upstream = request(
        { host: "127.0.0.1", port: storePort, method: req.method, path: req.url, headers: req.headers },
        (reply) => {
          call.status = reply.statusCode ?? 0;
          res.writeHead(reply.statusCode ?? 502, reply.headers);
          reply.pipe(res);
        },
      );
      if (uploadId) {
        const set = inflight.get(uploadId) ?? new Set();
        inflight.set(uploadId, set.add(upstream));
        upstream.once("close", () => set.delete(upstream));
      }
      upstream.on("error", () => res.destroy());
      // A client that gives up (an aborted part) ends the request to s3rver too, which would wait for its body.
      req.once("close", () => {
        if (!req.complete) upstream.destroy();
      });
      req.pipe(upstream);
    };
    const hold = helper.delay?.(call) ?? 0;
    if (hold > 0) setTimeout(forward, hold);
    else forward();
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
    get refuse() {
      return helper.refuse;
    },
    set refuse(f) {
      helper.refuse = f;
    },
    get delay() {
      return helper.delay;
    },
    set delay(f) {
      helper.delay = f;
    },
    async pendingUploads(bucket) {
      const all = await readdir(uploadsDir(bucket)).catch(() => [] as string[]);
      const ids = all.filter((id) => !aborted.has(id));
      return Promise.all(
        ids.map(async (id) => ({
          id,
          key: await readFile(join(uploadsDir(bucket), id, "key"), "utf8").catch(() => "(no key file)"),
        })),
      );
    },
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
