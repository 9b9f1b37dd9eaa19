/**
 * Booting an EOS disk image in QEMU: a qcow2 overlay over the image (the
 * image itself is never written), OVMF with its own copy of the variables,
 * KVM when it really works and TCG otherwise, the serial console on a pipe
 * (kept in memory and in a log file) or on the terminal, SSH forwarded to a
 * local port, an extra registry disk and an optional swtpm TPM. Used by
 * `eos run` and by the vm-tier tests (wait for a console line or for SSH,
 * run a command over SSH, power off, kill).
 */
import { createWriteStream, existsSync, type WriteStream } from "node:fs";
import { copyFile, mkdir, stat } from "node:fs/promises";
import { basename, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { EosError } from "../../core/errors.ts";
import { guestSshArgv, machineArgv, type Accel, type MachinePlan } from "../../core/machine/qemu-machine.ts";
import { systemRunner, type ChildProcess, type ProcessRunner } from "../process.ts";
import type { Architecture } from "../../core/image/arch.ts";
import { detectAccel, freePort, MACHINE_HOSTS } from "./host.ts";

export type { Accel };

export interface VmOptions {
  /** The disk image (raw); a qcow2 overlay in workDir takes the writes. */
  image: string;
  /** The image's architecture (default x86_64): QEMU binary, board and UEFI firmware. */
  architecture?: Architecture;
  /** Overlay disk, OVMF variables, registry disk, TPM state and console log live here. */
  workDir: string;
  memoryMiB?: number;
  cpus?: number;
  /** Host port forwarded to the guest's SSH (127.0.0.1 only); 0 or undefined picks a free one. */
  sshPort?: number;
  /** Private key for `ssh`/`waitForSsh`. */
  sshKey?: string;
  tpm?: boolean;
  accel?: "auto" | Accel;
  /** Size of the extra registry disk (bytes); 0 for none. */
  registryDiskBytes?: number;
  /** Virtual size of the working disk (bytes): larger than the image leaves room to grow p.spare. */
  diskBytes?: number;
  /** Console on the caller's terminal (interactive `eos run`) instead of a pipe. */
  interactive?: boolean;
  /** Console log file (default WORKDIR/console.log). */
  consoleLog?: string;
  /** Called with each console line (headless only). */
  onConsoleLine?: (line: string) => void;
  /** A reset of the guest ends QEMU (a power cut test inspects the disk before the next boot). */
  noReboot?: boolean;
  /** Reuse the existing working disk and OVMF variables in workDir (a second boot of the same machine). */
  reuseDisk?: boolean;
  /** Disk bus, user-network extras (an EC2-like machine: NVMe, a metadata service), a link between guests. */
  machine?: Pick<MachinePlan, "diskBus" | "guestNet" | "guestForwards" | "guestLink">;
  /** Starts QEMU, swtpm, qemu-img and ssh (default: the system's). */
  proc?: ProcessRunner;
}

export interface SshResult {
  code: number;
  stdout: string;
  stderr: string;
}

export class Vm {
  readonly accel: Accel;
  readonly sshPort: number;
  readonly workDir: string;
  readonly consoleLog: string;
  readonly startedAt: number;
  readonly exited: Promise<number | null>;
  private readonly qemu: ChildProcess;
  private readonly swtpm: ChildProcess | undefined;
  private readonly sshKey: string | undefined;
  private readonly proc: ProcessRunner;
  private consoleText = "";
  private waiters: Array<() => void> = [];
  private exitCode: number | null | undefined;
  private log: WriteStream | undefined;

  private constructor(init: {
    accel: Accel;
    sshPort: number;
    workDir: string;
    consoleLog: string;
    qemu: ChildProcess;
    swtpm: ChildProcess | undefined;
    sshKey: string | undefined;
    proc: ProcessRunner;
    log: WriteStream | undefined;
    onConsoleLine: ((line: string) => void) | undefined;
  }) {
    this.accel = init.accel;
    this.sshPort = init.sshPort;
    this.workDir = init.workDir;
    this.consoleLog = init.consoleLog;
    this.qemu = init.qemu;
    this.swtpm = init.swtpm;
    this.sshKey = init.sshKey;
    this.proc = init.proc;
    this.log = init.log;
    this.startedAt = performance.now();
    let partial = "";
    const onData = (chunk: Buffer) => {
      const text = chunk.toString("utf8");
      this.consoleText += text;
      this.log?.write(chunk);
      if (init.onConsoleLine) {
        const lines = (partial + text).split(/\r?\n/);
        partial = lines.pop() ?? "";
        for (const l of lines) init.onConsoleLine(l);
      }
      this.wake();
    };
    this.qemu.stdout?.on("data", onData);
    this.qemu.stderr?.on("data", onData);
    this.exited = new Promise((res) => {
      this.qemu.once("close", (code, signal) => {
        this.exitCode = code ?? (signal ? -1 : null);
        this.log?.end();
        this.log = undefined;
        this.swtpm?.kill("SIGTERM");
        this.wake();
        res(this.exitCode);
      });
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Starts QEMU (and swtpm) and returns at once; the guest boots in the background. */
  static async start(options: VmOptions): Promise<Vm> {
    const workDir = resolve(options.workDir);
    await mkdir(workDir, { recursive: true });
    const image = resolve(options.image);
    const imageStat = await stat(image).catch(() => undefined);
    if (!imageStat?.isFile()) throw new EosError("NOT_FOUND", `image ${image} does not exist`);
    const architecture = options.architecture ?? "x86_64";
    const host = MACHINE_HOSTS[architecture];
    for (const f of [host.firmwareCode, host.firmwareVars]) {
      if (!existsSync(f))
        throw new EosError("VM", `${f} is missing`, {
          hint: `apt-get install ${host.packages} (scripts/setup.sh)`,
        });
    }
    const proc = options.proc ?? systemRunner();
    const accel =
      options.accel && options.accel !== "auto"
        ? options.accel
        : await detectAccel(process.env, proc, architecture);
    const disk = join(workDir, "disk.qcow2");
    const vars = join(workDir, basename(host.firmwareVars));
    if (!options.reuseDisk || !existsSync(disk)) {
      const size = Math.max(options.diskBytes ?? 0, imageStat.size);
      await proc.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", image, disk, String(size)],
        { code: "VM" },
      );
      await copyFile(host.firmwareVars, vars);
    }
    const registryBytes = options.registryDiskBytes ?? 2 * 1024 * 1024 * 1024;
    const registry = join(workDir, "registry.qcow2");
    if (registryBytes > 0 && (!options.reuseDisk || !existsSync(registry))) {
      await proc.run(["qemu-img", "create", "-q", "-f", "qcow2", registry, String(registryBytes)], {
        code: "VM",
      });
    }
    const sshPort = options.sshPort && options.sshPort > 0 ? options.sshPort : await freePort();
    let swtpm: ChildProcess | undefined;
    let tpmSocket: string | undefined;
    if (options.tpm) {
      const tpm = await startSwtpm(proc, workDir);
      swtpm = tpm.child;
      tpmSocket = tpm.socket;
    }
    const consoleLog = options.consoleLog ? resolve(options.consoleLog) : join(workDir, "console.log");
    const args = machineArgv({
      architecture,
      accel,
      cpus: options.cpus ?? 2,
      memoryMiB: options.memoryMiB ?? 1024,
      firmwareCode: host.firmwareCode,
      firmwareVars: vars,
      disk,
      sshPort,
      interactive: Boolean(options.interactive),
      registryDisk: registryBytes > 0 ? registry : undefined,
      tpmSocket,
      noReboot: options.noReboot,
      ...options.machine,
    });
    const qemu = proc.start([host.qemu, ...args], {
      stdio: options.interactive ? "inherit" : ["pipe", "pipe", "pipe"],
    }).child;
    const log = options.interactive ? undefined : createWriteStream(consoleLog, { flags: "a" });
    const vm = new Vm({
      accel,
      sshPort,
      workDir,
      consoleLog,
      qemu,
      swtpm,
      sshKey: options.sshKey,
      proc,
      log,
      onConsoleLine: options.onConsoleLine,
    });
    qemu.once("error", (error) => {
      vm.consoleText += `\n[eos: cannot start ${host.qemu}: ${error.message}]\n`;
    });
    return vm;
  }

  get running(): boolean {
    return this.exitCode === undefined;
  }

  /** Everything the console printed so far. */
  console(): string {
    return this.consoleText;
  }

  /** The console's last `lines` non-empty lines, without terminal escapes: what a failure shows. */
  consoleTail(lines: number): string {
    return (
      this.consoleText
        // eslint-disable-next-line no-control-regex
        .replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "")
        .split(/\r?\n/)
        .filter((l) => l.trim() !== "")
        .slice(-lines)
        .join("\n")
    );
  }

  /** Position in the console text, to wait only for lines printed after it. */
  mark(): number {
    return this.consoleText.length;
  }

  /** Seconds since QEMU started. */
  uptime(): number {
    return (performance.now() - this.startedAt) / 1000;
  }

  /** Waits until the console (after `since`) matches; returns the match. */
  async waitForConsole(
    pattern: RegExp,
    options: { timeoutMs: number; since?: number },
  ): Promise<RegExpMatchArray> {
    const deadline = performance.now() + options.timeoutMs;
    for (;;) {
      const m = this.consoleText.slice(options.since ?? 0).match(pattern);
      if (m) return m;
      if (!this.running) {
        throw new EosError("VM", `QEMU exited (${this.exitCode}) before the console showed ${pattern}`, {
          hint: `console log: ${this.consoleLog}`,
        });
      }
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new EosError(
          "VM",
          `timed out after ${options.timeoutMs / 1000} s waiting for ${pattern} on the console`,
          {
            hint: `last console lines:\n${this.consoleText.slice(-1500)}`,
          },
        );
      }
      await Promise.race([
        new Promise<void>((res) => this.waiters.push(res)),
        sleep(Math.min(left, 1000), undefined, { ref: false }),
      ]);
    }
  }

  /** Types into the serial console (headless only). */
  sendConsole(text: string): void {
    this.qemu.stdin?.write(text);
  }

  private requireSshKey(): string {
    if (!this.sshKey) throw new EosError("VM", "no SSH key given to the VM (sshKey)");
    return this.sshKey;
  }

  /** Runs a command in the guest as root; argv elements are quoted for the remote shell. */
  async ssh(
    command: string[],
    options: { timeoutMs?: number; input?: string | Buffer; connectTimeout?: number } = {},
  ): Promise<SshResult> {
    try {
      const r = await this.proc.run(
        ["ssh", ...guestSshArgv(this.requireSshKey(), this.sshPort, command, options.connectTimeout ?? 10)],
        {
          check: false,
          timeoutMs: options.timeoutMs ?? 120_000,
          ...(options.input === undefined ? {} : { input: options.input }),
        },
      );
      return { code: r.signal ? 255 : r.code, stdout: r.stdout, stderr: r.stderr };
    } catch (error) {
      return { code: 255, stdout: "", stderr: (error as Error).message };
    }
  }

  /** Like ssh() but throws unless the command exits 0; returns stdout. */
  async sshOk(
    command: string[],
    options: { timeoutMs?: number; input?: string | Buffer } = {},
  ): Promise<string> {
    const r = await this.ssh(command, options);
    if (r.code !== 0) {
      throw new EosError(
        "VM",
        `guest command ${command.join(" ")} failed (${r.code}): ${r.stderr.trim() || r.stdout.trim()}`,
      );
    }
    return r.stdout;
  }

  /** Polls until SSH answers (sshd up, key accepted). */
  async waitForSsh(options: { timeoutMs: number }): Promise<void> {
    const deadline = performance.now() + options.timeoutMs;
    let last = "";
    while (performance.now() < deadline) {
      if (!this.running)
        throw new EosError(
          "VM",
          `QEMU exited (${this.exitCode}) before SSH answered; the console's last lines:\n${this.consoleTail(20)}`,
          { hint: `console log: ${this.consoleLog}` },
        );
      const r = await this.ssh(["true"], { timeoutMs: 20_000, connectTimeout: 5 });
      if (r.code === 0) return;
      last = r.stderr.trim();
      await sleep(2000);
    }
    throw new EosError(
      "VM",
      `SSH on 127.0.0.1:${this.sshPort} did not answer within ${options.timeoutMs / 1000} s (${last})`,
      {
        hint: `console log: ${this.consoleLog}`,
      },
    );
  }

  /** Waits until QEMU ends by itself (with noReboot: the guest reset or powered off); its exit code. */
  async waitForExit(options: { timeoutMs: number; what: string }): Promise<number | null> {
    const error = new EosError("VM", `${options.what}: QEMU still ran after ${options.timeoutMs / 1000} s`, {
      hint: `console log: ${this.consoleLog}`,
    });
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([
      this.exited,
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(error), options.timeoutMs))),
    ]).finally(() => clearTimeout(timer));
  }

  /** Clean shutdown from inside (systemctl poweroff); falls back to SIGTERM, then SIGKILL. */
  async powerOff(options: { timeoutMs?: number } = {}): Promise<number | null> {
    if (!this.running) return this.exitCode ?? null;
    if (this.sshKey) await this.ssh(["systemctl", "poweroff"], { timeoutMs: 15_000, connectTimeout: 5 });
    const timeout = options.timeoutMs ?? 60_000;
    const done = await Promise.race([
      this.exited.then(() => true),
      sleep(timeout, undefined, { ref: false }).then(() => false),
    ]);
    if (done) return this.exitCode ?? null;
    this.qemu.kill("SIGTERM");
    const done2 = await Promise.race([
      this.exited.then(() => true),
      sleep(10_000, undefined, { ref: false }).then(() => false),
    ]);
    if (!done2) return this.kill();
    return this.exitCode ?? null;
  }

  /** Pulls the plug: SIGKILL to QEMU (a power cut for the guest). */
  async kill(): Promise<number | null> {
    if (this.running) this.qemu.kill("SIGKILL");
    await this.exited;
    return this.exitCode ?? null;
  }
}

/** swtpm for one machine: its state in WORKDIR/tpm, its control socket beside; it ends with QEMU. */
async function startSwtpm(
  proc: ProcessRunner,
  workDir: string,
): Promise<{ child: ChildProcess; socket: string }> {
  const stateDir = join(workDir, "tpm");
  await mkdir(stateDir, { recursive: true });
  const socket = join(workDir, "swtpm.sock");
  const tpm = proc.start(
    [
      "swtpm",
      "socket",
      "--tpm2",
      "--tpmstate",
      `dir=${stateDir}`,
      "--ctrl",
      `type=unixio,path=${socket}`,
      "--terminate",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let ended = false;
  void tpm.exited.then(() => (ended = true));
  for (let i = 0; i < 50 && !existsSync(socket); i++) {
    if (ended) throw new EosError("TPM", `swtpm: ${tpm.stderr().trim()}`, { hint: "apt-get install swtpm" });
    await sleep(100);
  }
  if (!existsSync(socket)) throw new EosError("TPM", `swtpm did not create ${socket}`);
  return { child: tpm.child, socket };
}
