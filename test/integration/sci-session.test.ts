/**
 * The pilot's side of the sci channel against a guest played by a Unix
 * socket server here: the answer to the command frame bounds the wait for
 * a guest that never got the command (the hang CI met when the guest init
 * dropped a command while reopening its port).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { encodeFrame, FrameDecoder } from "../../src/core/flakes/sci-protocol.ts";
import { connectChannel, runSession } from "../../src/io/flakes/sci-session.ts";

async function withGuest<T>(
  guest: (sock: Socket) => void,
  body: (socketPath: string) => Promise<T>,
): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), "eos-sci-"));
  const socketPath = join(dir, "sci.sock");
  const server = createServer(guest);
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  try {
    return await body(socketPath);
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

function session(socketPath: string, ackTimeoutMs: number) {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const stdin = new PassThrough();
  stdin.end();
  let out = "";
  stdout.on("data", (b: Buffer) => (out += b.toString()));
  return connectChannel("qemu", socketPath, 0, () => true, 5000)
    .then((channel) => runSession(channel, ["/bin/true"], { stdin, stdout, stderr }, undefined, ackTimeoutMs))
    .then((result) => ({ result, out }));
}

test("a guest that never takes the command: the session is lost after the answer's time limit, not held", async () => {
  let received = 0;
  const started = Date.now();
  const { result } = await withGuest(
    (sock) => sock.on("data", (b: Buffer) => (received += b.length)),
    (path) => session(path, 300),
  );
  assert.deepEqual(result, {
    status: "lost",
    detail: "the guest init did not take the command within 300 ms",
  });
  assert.ok(received > 0, "the command frame was sent");
  assert.ok(Date.now() - started < 5000);
});

test("a guest that answers the command and then runs it for longer than the limit: its exit code", async () => {
  const { result, out } = await withGuest(
    (sock) => {
      const decoder = new FrameDecoder();
      sock.on("data", (b: Buffer) => {
        if (!decoder.push(b).some((f) => f.type === "C")) return;
        sock.write(encodeFrame("A"));
        setTimeout(() => {
          sock.write(encodeFrame("O", Buffer.from("done\n")));
          sock.write(encodeFrame("X", Buffer.from([0, 0, 0, 5])));
        }, 600);
      });
    },
    (path) => session(path, 300),
  );
  assert.deepEqual(result, { status: "exit", code: 5 });
  assert.equal(out, "done\n");
});
