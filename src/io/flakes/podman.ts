/**
 * The podman adapter: every podman call of flake-ctl and podman-pilot goes
 * through here, so `PILOT_DEBUG=1` can print each one and a missing podman
 * is one clear error.
 */
import type { Writable } from "node:stream";
import { EosError } from "../../core/errors.ts";
import type { Context } from "../context.ts";
import { formatArgv, launch, type ProcessRunner, type StdioOptions } from "../process.ts";
import { pathExistsSync, type FlakesSetup } from "./flake-files.ts";
import { isDebug } from "./pilot.ts";

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
  proc: ProcessRunner;
}

const INSTALL_HINT = "install podman (Debian: apt-get install podman runc)";

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
      this.options.log.write(`${this.options.label}: debug: ${formatArgv([cmd, ...argv])}\n`);
    }
  }

  /** Runs podman with captured output. Throws PODMAN unless `allowFailure`. */
  async output(
    args: string[],
    opts: { allowFailure?: boolean; stdin?: "ignore" | "inherit" } = {},
  ): Promise<PodmanResult> {
    this.trace(args);
    const [cmd, argv] = this.command(args);
    const result = await this.options.proc.run([cmd, ...argv], {
      env: this.env,
      stdin: opts.stdin ?? "ignore",
      check: false,
      code: "PODMAN",
      hint: INSTALL_HINT,
    });
    if (result.code !== 0 && !opts.allowFailure) {
      const detail = result.stderr.split("\n").slice(-3).join(" / ") || `exit ${result.code}`;
      throw new EosError("PODMAN", `podman ${args[0] ?? ""} failed: ${detail}`);
    }
    return { code: result.code, stdout: result.stdout, stderr: result.stderr };
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
    return launch(this.options.proc, [cmd, ...argv], {
      env: this.env,
      stdio: opts.stdio ?? "inherit",
      ownGroup: opts.ownGroup ?? false,
      code: "PODMAN",
      hint: INSTALL_HINT,
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

/** podman's environment for flakes: the flake storage.conf applies unless the caller chose one. */
export function podmanEnv(env: NodeJS.ProcessEnv, setup: FlakesSetup): NodeJS.ProcessEnv {
  if (env.CONTAINERS_STORAGE_CONF || !pathExistsSync(setup.config.podmanStorageConf)) return env;
  return { ...env, CONTAINERS_STORAGE_CONF: setup.config.podmanStorageConf };
}

/** The podman adapter for flake-ctl and podman-pilot (PILOT_DEBUG prints every call). */
export function flakePodman(ctx: Context, setup: FlakesSetup, label: string, runas?: string): Podman {
  return new Podman({
    env: podmanEnv(ctx.env, setup),
    debug: isDebug(ctx.env),
    log: ctx.stderr,
    label,
    runas,
    proc: ctx.proc,
  });
}
