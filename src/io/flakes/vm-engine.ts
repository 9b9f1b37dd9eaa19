/**
 * Running a VM flake: start the engine (QEMU or Firecracker), connect to the
 * guest init's channel, relay one command's streams, signals and exit
 * status; tap devices for Firecracker's network; instance records of resume
 * VMs. Every process is spawned with an argv array.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { constants } from "node:os";
import { delimiter, join } from "node:path";
import type { Readable, Writable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { EosError } from "../../core/errors.ts";
import { isVsockOk, vsockConnectLine } from "../../core/flakes/firecracker-config.ts";
import {
  commandFrame,
  encodeFrame,
  exitStatus,
  FrameDecoder,
  signalFrame,
  stdinFrames,
} from "../../core/flakes/sci-protocol.ts";
import type { VmEngine } from "../../core/flakes/vm.ts";

export const QEMU_BINARY = "qemu-system-x86_64";
export const FIRECRACKER_BINARY = "firecracker";

export function binaryFor(engine: VmEngine, env: NodeJS.ProcessEnv): string {
  if (engine === "qemu") return env.EOS_QEMU_BINARY || QEMU_BINARY;
  return env.EOS_FIRECRACKER_BINARY || FIRECRACKER_BINARY;
}

/** The program's full path in PATH (or the path itself when it has a slash). */
export function findInPath(program: string, env: NodeJS.ProcessEnv): string | undefined {
  if (program.includes("/")) return existsSync(program) ? program : undefined;
  for (const dir of (env.PATH ?? "/usr/local/bin:/usr/bin:/bin").split(delimiter)) {
    if (!dir) continue;
    const full = join(dir, program);
    if (existsSync(full)) return full;
  }
  return undefined;
}

/**
 * The engine for a flake: `firecracker` or `qemu` as configured (FLAKE_VM_ENGINE
 * overrides), or for `auto` Firecracker where it is installed, QEMU otherwise.
 * An engine that is not installed is a VM error naming it.
 */
export function chooseEngine(
  configured: VmEngine | "auto",
  env: NodeJS.ProcessEnv,
): { engine: VmEngine; binary: string } {
  const forced = env.FLAKE_VM_ENGINE;
  let wanted: VmEngine | "auto" = configured;
  if (forced === "qemu" || forced === "firecracker" || forced === "auto") wanted = forced;
  else if (forced) throw new EosError("USAGE", `FLAKE_VM_ENGINE=${forced}: use firecracker, qemu or auto`);
  const candidates: VmEngine[] = wanted === "auto" ? ["firecracker", "qemu"] : [wanted];
  for (const engine of candidates) {
    const binary = findInPath(binaryFor(engine, env), env);
    if (binary) return { engine, binary };
  }
  if (wanted === "auto") {
    throw new EosError(
      "VM",
      `no VM engine is installed: neither ${binaryFor("firecracker", env)} nor ${binaryFor("qemu", env)} is in PATH`,
      {
        hint: "install firecracker, or QEMU (Debian: apt-get install qemu-system-x86)",
      },
    );
  }
  throw new EosError(
    "VM",
    `the VM engine ${wanted} is not installed (${binaryFor(wanted, env)} is not in PATH)`,
    {
      hint:
        wanted === "qemu"
          ? "install QEMU (Debian: apt-get install qemu-system-x86), or set vm.runtime.engine"
          : "install Firecracker, or run the flake with QEMU: FLAKE_VM_ENGINE=qemu or vm.runtime.engine: qemu",
    },
  );
}

function bootId(): string {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return "unknown";
  }
}

/**
 * KVM or TCG for QEMU. KVM only if QEMU can really start a vCPU with it
 * (/dev/kvm may exist and still fail); probed once per host boot, the
 * answer kept in `cacheFile`. EOS_QEMU_ACCEL=kvm|tcg overrides.
 */
export async function qemuAccel(
  preference: "auto" | "kvm" | "tcg",
  env: NodeJS.ProcessEnv,
  binary: string,
  cacheFile: string,
): Promise<"kvm" | "tcg"> {
  const forced = env.EOS_QEMU_ACCEL;
  if (forced === "kvm" || forced === "tcg") return forced;
  if (preference !== "auto") return preference;
  if (!existsSync("/dev/kvm")) return "tcg";
  const boot = bootId();
  const cached = await readFile(cacheFile, "utf8").catch(() => "");
  const [cachedBoot, cachedAccel] = cached.trim().split(" ");
  if (cachedBoot === boot && (cachedAccel === "kvm" || cachedAccel === "tcg")) return cachedAccel;
  const child = spawn(
    binary,
    ["-accel", "kvm", "-cpu", "host", "-machine", "q35", "-m", "64", "-nodefaults", "-display", "none", "-S"],
    {
      stdio: "ignore",
    },
  );
  const exited = new Promise<number | null>((resolve) => {
    child.once("error", () => resolve(-1));
    child.once("exit", (code) => resolve(code));
  });
  const outcome = await Promise.race([exited, sleep(3000, "running" as const, { ref: false })]);
  if (outcome === "running") {
    child.kill("SIGKILL");
    await exited;
  }
  const accel = outcome === "running" ? "kvm" : "tcg";
  await writeFile(cacheFile, `${boot} ${accel}\n`).catch(() => undefined);
  return accel;
}

// ---------------------------------------------------------------- processes

export interface VmProcess {
  child: ChildProcess;
  pid: number;
  /** Resolves when the engine process ends. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr(): string;
}

/**
 * Starts the engine. Its stdout (Firecracker's serial console) goes to
 * `consoleLog`; stderr is kept for error messages. `detached`: the VM
 * outlives the pilot (resume).
 */
export function startEngine(
  binary: string,
  argv: string[],
  opts: { consoleLog: string; detached: boolean; env: NodeJS.ProcessEnv },
): VmProcess {
  // Always its own process group: a Ctrl-C at the terminal reaches the app
  // through the pilot (as a signal frame), not QEMU. Only a resume VM is let go.
  const out = openSync(opts.consoleLog, "a");
  let child: ChildProcess;
  let errText = "";
  try {
    child = spawn(binary, argv, {
      stdio: ["ignore", out, opts.detached ? out : "pipe"],
      detached: true,
      env: opts.env,
    });
  } finally {
    closeSync(out);
  }
  child.stderr?.setEncoding("utf8").on("data", (s: string) => {
    if (errText.length < 16384) errText += s;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once("error", (error) => {
      errText += error.message;
      resolve({ code: -1, signal: null });
    });
    child.once("exit", (code, signal) => resolve({ code, signal }));
  });
  if (opts.detached) child.unref();
  return { child, pid: child.pid ?? -1, exited, stderr: () => errText };
}

export async function stopProcess(vm: VmProcess, graceMs = 2000): Promise<void> {
  if (vm.child.exitCode !== null || vm.child.signalCode !== null) return;
  vm.child.kill("SIGTERM");
  const done = await Promise.race([vm.exited.then(() => true), sleep(graceMs, false, { ref: false })]);
  if (!done) {
    vm.child.kill("SIGKILL");
    await vm.exited;
  }
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Is `pid` still the VM we started (its command line names `marker`)? */
export function isOurVm(pid: number, marker: string): boolean {
  if (!pidAlive(pid)) return false;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(marker);
  } catch {
    return false;
  }
}

export async function killPid(pid: number, graceMs = 2000): Promise<void> {
  if (!pidAlive(pid)) return;
  try {
    process.kill(pid, "SIGTERM");
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline) {
    if (!pidAlive(pid)) return;
    await sleep(20);
  }
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // gone
  }
  while (pidAlive(pid)) await sleep(10);
}

// ---------------------------------------------------------------- tap devices

function ip(args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (s: string) => (stderr += s));
    child.on("error", (error) => resolve({ code: -1, stderr: error.message }));
    child.on("close", (code) => resolve({ code: code ?? 1, stderr }));
  });
}

/** Creates a tap device for Firecracker; removes it again if bringing it up fails. */
export async function createTap(name: string): Promise<void> {
  if (!/^[a-z0-9]{1,15}$/.test(name)) throw new EosError("INTERNAL", `bad tap name ${name}`);
  const add = await ip(["tuntap", "add", "dev", name, "mode", "tap"]);
  if (add.code !== 0)
    throw new EosError("VM", `cannot create tap device ${name}: ${add.stderr.trim()}`, {
      hint: "needs root (CAP_NET_ADMIN) and iproute2",
    });
  const up = await ip(["link", "set", "dev", name, "up"]);
  if (up.code !== 0) {
    await removeTap(name);
    throw new EosError("VM", `cannot bring tap device ${name} up: ${up.stderr.trim()}`);
  }
}

export async function removeTap(name: string): Promise<void> {
  if (!/^[a-z0-9]{1,15}$/.test(name)) return;
  await ip(["link", "del", "dev", name]);
}

export function tapExists(name: string): boolean {
  return existsSync(`/sys/class/net/${name}`);
}

// ---------------------------------------------------------------- channel

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
    const finish = (result: SessionResult) => {
      if (finished) return;
      finished = true;
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
