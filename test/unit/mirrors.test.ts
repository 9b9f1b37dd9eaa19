/**
 * update.mirrors: a request goes to the server in use; one that cannot be
 * reached, or whose stream breaks off, hands over to the next; answers every
 * replica would give alike (no access, not published) do not.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { EosError } from "../../src/core/errors.ts";
import { mirroredSource } from "../../src/io/update/mirrors.ts";
import type { UpdateSource } from "../../src/io/update/source.ts";

interface Fake extends UpdateSource {
  calls: string[];
  down: boolean;
  refuse?: EosError;
  streams: PassThrough[];
}

function fake(name: string): Fake {
  const f: Fake = {
    describe: name,
    calls: [],
    down: false,
    streams: [],
    async fetchManifest() {
      f.calls.push("manifest");
      if (f.refuse) throw f.refuse;
      if (f.down) throw new EosError("NETWORK", `${name}: ECONNREFUSED`);
      return { manifest: Buffer.from(name), signature: Buffer.from("sig") };
    },
    async fetchDeltaIndex() {
      return undefined;
    },
    async openDelta() {
      throw new EosError("NOT_FOUND", "no delta");
    },
    async openStream(_kind, offset) {
      f.calls.push(`stream@${offset}`);
      if (f.down) throw new EosError("NETWORK", `${name}: ECONNREFUSED`);
      const stream = new PassThrough();
      f.streams.push(stream);
      return { stream, offset };
    },
  };
  return f;
}

test("a server that cannot be reached hands over to the next, which stays in use", async () => {
  const [a, b] = [fake("a"), fake("b")];
  const lines: string[] = [];
  const source = mirroredSource([a, b], (l) => lines.push(l));
  assert.equal((await source.fetchManifest()).manifest.toString(), "a");
  a.down = true;
  assert.equal((await source.fetchManifest()).manifest.toString(), "b");
  a.down = false;
  assert.equal((await source.fetchManifest()).manifest.toString(), "b", "no flapping back");
  assert.match(lines.join("\n"), /a: a: ECONNREFUSED; continuing with b/);
});

test("a stream that breaks off sends the resume, at the byte the caller has, to the next server", async () => {
  const [a, b] = [fake("a"), fake("b")];
  const source = mirroredSource([a, b], () => undefined);
  const first = await source.openStream("root", 0, '"x"');
  first.stream.on("error", () => undefined);
  (a.streams[0] as PassThrough).destroy(Object.assign(new Error("aborted"), { code: "ECONNRESET" }));
  await new Promise((r) => setImmediate(r));
  await source.openStream("root", 4096, '"x"');
  assert.deepEqual(a.calls, ["stream@0"]);
  assert.deepEqual(b.calls, ["stream@4096"]);
});

test("a stream the caller closes itself (it has what it needs) moves nothing", async () => {
  const [a, b] = [fake("a"), fake("b")];
  const source = mirroredSource([a, b], () => undefined);
  (await source.openStream("root", 0, undefined)).stream.destroy();
  await new Promise((r) => setImmediate(r));
  await source.openStream("root", 10, undefined);
  assert.deepEqual(a.calls, ["stream@0", "stream@10"]);
  assert.deepEqual(b.calls, []);
});

test("a refusal every replica would give is not retried elsewhere; all down fails with the last error", async () => {
  const [a, b] = [fake("a"), fake("b")];
  const source = mirroredSource([a, b], () => undefined);
  a.refuse = new EosError("AUTH", "refused the token");
  await assert.rejects(source.fetchManifest(), /refused the token/);
  assert.deepEqual(b.calls, []);
  a.refuse = undefined;
  a.down = true;
  b.down = true;
  await assert.rejects(source.fetchManifest(), (e: EosError) => e.code === "NETWORK" && /b:/.test(e.message));
  assert.deepEqual([a.calls.length, b.calls.length], [2, 1], "each server asked once per call");
});
