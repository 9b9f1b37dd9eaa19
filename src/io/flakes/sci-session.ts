/**
 * The guest init's channel: connect to QEMU's virtio-serial socket or
 * Firecracker's vsock, then run one command over it: argv out, stdin in
 * frames, the guest's stdout/stderr frames out to ours, our signals passed
 * on, and the exit status back.
 */
import { existsSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { constants } from "node:os";
import type { Readable, Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { EosError } from "../../core/errors.ts";
import { isVsockOk, vsockConnectLine } from "../../core/flakes/firecracker-config.ts";
import {
  COMMAND_ACK_TIMEOUT_MS,
  commandFrame,
  encodeFrame,
  exitStatus,
  FrameDecoder,
  signalFrame,
  stdinFrames,
} from "../../core/flakes/sci-protocol.ts";
import type { VmEngine } from "../../core/flakes/vm.ts";

function tryConnect(path: string): Promise<Socket | undefined> {
  return new Promise((resolve) => {
    const sock = connect(path);
    const fail = () => {
      sock.destroy();
      resolve(undefined);
    };
    sock.once("error", fail);
    sock.once("connect", () => {
      sock.off("error", fail);
      resolve(sock);
    });
  });
}

function readLine(sock: Socket, timeoutMs: number): Promise<{ line: string; rest: Buffer } | undefined> {
  return new Promise((resolve) => {
    let buf = Buffer.alloc(0);
    const done = (value: { line: string; rest: Buffer } | undefined) => {
      clearTimeout(timer);
      sock.off("data", onData);
      sock.off("close", onClose);
      sock.off("error", onClose);
      resolve(value);
    };
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      const nl = buf.indexOf(10);
      if (nl >= 0) done({ line: buf.subarray(0, nl).toString("latin1"), rest: buf.subarray(nl + 1) });
    };
    const onClose = () => done(undefined);
    const timer = setTimeout(() => done(undefined), timeoutMs);
    sock.on("data", onData);
    sock.once("close", onClose);
    sock.once("error", onClose);
  });
}

export interface Channel {
  sock: Socket;
  /** Bytes that arrived with the handshake. */
  early: Buffer;
}

/**
 * Connects to the guest's channel: QEMU's socket for the virtio-serial port,
 * or Firecracker's vsock socket with `CONNECT port`. Retries while the VM is
 * starting (`alive` says whether it still runs) until `timeoutMs`.
 */
export async function connectChannel(
  engine: VmEngine,
  socketPath: string,
  port: number,
  alive: () => boolean,
  timeoutMs: number,
): Promise<Channel> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (!alive()) throw new EosError("VM", "the VM ended before its guest init answered");
    const sock = existsSync(socketPath) ? await tryConnect(socketPath) : undefined;
    if (sock) {
      if (engine === "qemu") return { sock, early: Buffer.alloc(0) };
      sock.write(vsockConnectLine(port));
      const answer = await readLine(sock, Math.max(100, deadline - Date.now()));
      if (answer && isVsockOk(answer.line)) return { sock, early: answer.rest };
      sock.destroy();
    }
    if (Date.now() > deadline) {
      throw new EosError(
        "VM",
        `the guest did not answer on ${engine === "qemu" ? socketPath : `vsock port ${port}`} within ${Math.round(timeoutMs / 1000)} s`,
      );
    }
    await sleep(engine === "qemu" ? 10 : 25);
  }
}

const FORWARDED_SIGNALS: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"];

export interface SessionIo {
  stdin: Readable;
  stdout: Writable;
  stderr: Writable;
  /** Called when the guest sent its first output (the launch indicator stops). */
  onFirstOutput?: () => void;
}

export type SessionResult = { status: "exit"; code: number } | { status: "lost"; detail: string };

/**
 * One command over a connected channel: sends argv, relays stdin (until EOF),
 * writes the guest's stdout/stderr frames to our own, passes our signals
 * on, and returns the exit status. `lost` when the channel closed first.
 */
export function runSession(
  channel: Channel,
  argv: string[],
  io: SessionIo,
  vmExited?: Promise<unknown>,
  ackTimeoutMs = COMMAND_ACK_TIMEOUT_MS,
): Promise<SessionResult> {
  const { sock } = channel;
  return new Promise((resolve) => {
    const decoder = new FrameDecoder();
    let finished = false;
    let first = true;
    const handlers = FORWARDED_SIGNALS.map((sig) => {
      const handler = () => {
        if (!finished) sock.write(signalFrame(constants.signals[sig]));
      };
      process.on(sig, handler);
      return [sig, handler] as const;
    });
    const onStdinData = (chunk: Buffer) => {
      for (const frame of stdinFrames(chunk)) {
        if (!sock.write(frame)) {
          io.stdin.pause();
          sock.once("drain", () => io.stdin.resume());
        }
      }
    };
    const onStdinEnd = () => {
      if (!finished) sock.write(encodeFrame("i"));
    };
    const onStdinError = () => onStdinEnd();
    // The guest answers the command frame at once; without that answer the
    // command never arrived, and waiting on would wait forever.
    const ackTimer = setTimeout(
      () =>
        finish({
          status: "lost",
          detail: `the guest init did not take the command within ${ackTimeoutMs < 1000 ? `${ackTimeoutMs} ms` : `${Math.round(ackTimeoutMs / 1000)} s`}`,
        }),
      ackTimeoutMs,
    );
    const finish = (result: SessionResult) => {
      if (finished) return;
      finished = true;
      clearTimeout(ackTimer);
      for (const [sig, handler] of handlers) process.off(sig, handler);
      io.stdin.off("data", onStdinData);
      io.stdin.off("end", onStdinEnd);
      io.stdin.off("error", onStdinError);
      // Do not keep the pilot alive for a terminal or pipe nobody reads any more.
      io.stdin.destroy();
      sock.end();
      sock.destroy();
      resolve(result);
    };
    sock.on("data", (chunk: Buffer) => {
      let frames;
      try {
        frames = decoder.push(chunk);
      } catch (error) {
        finish({ status: "lost", detail: (error as Error).message });
        return;
      }
      clearTimeout(ackTimer);
      for (const frame of frames) {
        if (frame.type === "O" || frame.type === "E") {
          if (first) {
            first = false;
            io.onFirstOutput?.();
          }
          const target = frame.type === "O" ? io.stdout : io.stderr;
          if (!target.write(frame.payload)) {
            sock.pause();
            target.once("drain", () => sock.resume());
          }
        } else if (frame.type === "X") {
          const code = exitStatus(frame);
          // Let our stdout/stderr drain before reporting.
          let pending = 2;
          const done = () => {
            if (--pending === 0) finish({ status: "exit", code });
          };
          io.stdout.write("", done);
          io.stderr.write("", done);
          return;
        }
      }
    });
    sock.on("close", () => finish({ status: "lost", detail: "the guest closed the channel" }));
    sock.on("error", (error) => finish({ status: "lost", detail: error.message }));
    vmExited?.then(() => {
      // Frames still in flight arrive before 'close'; give them a moment.
      setTimeout(() => finish({ status: "lost", detail: "the VM ended" }), 200).unref();
    });
    sock.write(commandFrame(argv));
    if (channel.early.length > 0) sock.emit("data", channel.early);
    io.stdin.on("data", onStdinData);
    io.stdin.once("end", onStdinEnd);
    io.stdin.once("error", onStdinError);
    io.stdin.resume();
  });
}
