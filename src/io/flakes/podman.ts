/**
 * The podman adapter: every podman call of flake-ctl and podman-pilot goes
 * through here, so `PILOT_DEBUG=1` can print each one and a missing podman
 * is one clear error.
 */
import { spawn, type StdioOptions } from "node:child_process";
import { constants } from "node:os";
import type { Writable } from "node:stream";
import { EosError } from "../../core/errors.ts";

export interface PodmanResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface PodmanOptions {
  env: NodeJS.ProcessEnv;
  /** Print every podman call to `log` (PILOT_DEBUG=1). */
  debug: boolean;
  log: Writable;
  /** Name shown in debug lines. */
  label: string;
  /** Run podman as another user (`runas`): prefixes `sudo -n -u USER --preserve-env=…`. */
  runas?: string | undefined;
}

const FORWARDED_SIGNALS: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"];

function quote(arg: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

function notInstalled(error: unknown, command: string): EosError | undefined {
  if ((error as NodeJS.ErrnoException).code === "ENOENT") {
    return new EosError("PODMAN", `${command} is not installed (not found in PATH)`, {
      hint: "install podman (Debian: apt-get install podman runc)",
    });
  }
  return undefined;
}

export class Podman {
  readonly env: NodeJS.ProcessEnv;
  private readonly options: PodmanOptions;
  /** How many podman processes this adapter started (for tests and the benchmark). */
  calls = 0;

  constructor(options: PodmanOptions) {
    this.options = options;
    this.env = options.env;
  }

  private command(args: string[]): [string, string[]] {
    const runas = this.options.runas;
    if (runas) {
      const keep = ["CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_REGISTRIES_CONF"].join(",");
      return ["sudo", ["-n", "-u", runas, `--preserve-env=${keep}`, "podman", ...args]];
    }
    return ["podman", args];
  }

  private trace(args: string[]): void {
    this.calls++;
    if (this.options.debug) {
      const [cmd, argv] = this.command(args);
      this.options.log.write(`${this.options.label}: debug: ${[cmd, ...argv].map(quote).join(" ")}\n`);
    }
  }

  /** Runs podman with captured output. Throws PODMAN unless `allowFailure`. */
  async output(
    args: string[],
    opts: { allowFailure?: boolean; stdin?: "ignore" | "inherit" } = {},
  ): Promise<PodmanResult> {
    this.trace(args);
    const [cmd, argv] = this.command(args);
    return new Promise((resolve, reject) => {
      const child = spawn(cmd, argv, { env: this.env, stdio: [opts.stdin ?? "ignore", "pipe", "pipe"] });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on("data", (b: Buffer) => out.push(b));
      child.stderr.on("data", (b: Buffer) => err.push(b));
      child.on("error", (error) => reject(notInstalled(error, cmd) ?? error));
      child.on("close", (code, signal) => {
        const result = {
          code: code ?? 128 + (signal ? (constants.signals[signal] ?? 0) : 0),
          stdout: Buffer.concat(out).toString("utf8"),
          stderr: Buffer.concat(err).toString("utf8"),
        };
        if (result.code !== 0 && !opts.allowFailure) {
          const detail = result.stderr.trim().split("\n").slice(-3).join(" / ") || `exit ${result.code}`;
          reject(new EosError("PODMAN", `podman ${args[0] ?? ""} failed: ${detail}`));
          return;
        }
        resolve(result);
      });
    });
  }

  /**
   * Runs podman on the caller's own stdin/stdout/stderr (so streams stay
   * separate and unbuffered) and returns its exit code; a podman killed by a
   * signal gives 128+n. SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGUSR1/2 that reach us
   * are passed on. Without a TTY on stdin podman gets its own process group,
   * so a Ctrl-C from the terminal arrives once (through us), not twice.
   */
  async launch(args: string[], opts: { stdio?: StdioOptions; ownGroup?: boolean } = {}): Promise<number> {
    this.trace(args);
    const [cmd, argv] = this.command(args);
    return new Promise((resolve, reject) => {
      const child = spawn(cmd, argv, {
        env: this.env,
        stdio: opts.stdio ?? "inherit",
        detached: opts.ownGroup ?? false,
      });
      const handlers = FORWARDED_SIGNALS.map((sig) => {
        const handler = () => {
          if (child.exitCode === null && child.signalCode === null) child.kill(sig);
        };
        process.on(sig, handler);
        return [sig, handler] as const;
      });
      const cleanup = () => {
        for (const [sig, handler] of handlers) process.off(sig, handler);
      };
      child.on("error", (error) => {
        cleanup();
        reject(notInstalled(error, cmd) ?? error);
      });
      child.on("exit", (code, signal) => {
        cleanup();
        resolve(code ?? 128 + (signal ? (constants.signals[signal] ?? 0) : 0));
      });
    });
  }

  /** Image IDs in the order given; NOT_FOUND names the first unknown image. */
  async imageIds(names: string[]): Promise<string[]> {
    if (names.length === 0) return [];
    const result = await this.output(["image", "inspect", "--format", "{{.Id}}", ...names], {
      allowFailure: true,
    });
    if (result.code !== 0) {
      for (const name of names) {
        if (!(await this.imageExists(name))) {
          throw new EosError("NOT_FOUND", `container image ${name} is not in the local podman storage`, {
            hint: `load it first: flake-ctl podman load --oci FILE, or flake-ctl podman pull --uri ${name}`,
          });
        }
      }
      throw new EosError("PODMAN", `podman image inspect failed: ${result.stderr.trim()}`);
    }
    const ids = result.stdout.trim().split("\n");
    if (ids.length !== names.length) throw new EosError("PODMAN", `podman image inspect: unexpected output`);
    return ids;
  }

  async imageExists(name: string): Promise<boolean> {
    const result = await this.output(["image", "exists", name], { allowFailure: true });
    return result.code === 0;
  }

  /** `running`, `exited`, `created`, …, or undefined when no such container exists. */
  async containerState(cid: string): Promise<string | undefined> {
    const result = await this.output(["container", "inspect", "--format", "{{.State.Status}}", cid], {
      allowFailure: true,
    });
    if (result.code !== 0) return undefined;
    return result.stdout.trim() || undefined;
  }

  async removeContainer(cid: string): Promise<void> {
    await this.output(["rm", "--force", "--ignore", cid], { allowFailure: true });
  }

  /** Mounts an image read-only (root only), runs `fn` on the mount point, unmounts. */
  async withImageMount<T>(image: string, fn: (dir: string) => Promise<T>): Promise<T> {
    const mount = await this.output(["image", "mount", image]);
    const dir = mount.stdout.trim();
    try {
      return await fn(dir);
    } finally {
      await this.output(["image", "unmount", image], { allowFailure: true });
    }
  }
}
