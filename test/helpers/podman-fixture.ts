/**
 * Test fixtures for container flakes: an isolated podman storage, a
 * project-local containers.conf (runc, ulimits this machine allows), locally
 * built images (base, delta, layer), bundled pilot/flake-ctl binaries and a
 * flakes.yml that points everything into a temp directory.
 */
import { execFileSync, spawn, spawnSync, type SpawnOptions } from "node:child_process";
import {
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
  chmodSync,
  existsSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { build } from "esbuild";

export const REPO = resolve(import.meta.dirname, "..", "..");
export const CONTAINERS_CONF = join(REPO, "test", "fixtures", "containers.conf");

/** Why container tests cannot run here, or undefined when they can. */
export function podmanSkipReason(): string | undefined {
  if (process.getuid?.() !== 0) return "needs root (real podman with runc)";
  const r = spawnSync("podman", ["--version"], { encoding: "utf8" });
  if (r.error || r.status !== 0) return "podman is not installed";
  if (!existsSync("/bin/busybox")) return "needs /bin/busybox (busybox-static) to build test images";
  return undefined;
}

/** Bundles src/bin/NAME.ts like scripts/bundle.mjs does, into `dir`. */
export async function bundleBin(name: string, dir: string): Promise<string> {
  const outfile = join(dir, `${name}.mjs`);
  await build({
    entryPoints: [join(REPO, "src", "bin", `${name}.ts`)],
    outfile,
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node18",
    logLevel: "warning",
    banner: {
      js: "#!/usr/bin/env node\nimport { createRequire as __eosCreateRequire } from 'node:module'; const require = __eosCreateRequire(import.meta.url);",
    },
  });
  chmodSync(outfile, 0o755);
  return outfile;
}

export interface PodmanFixture {
  dir: string;
  storageConf: string;
  flakesConfig: string;
  flakesDir: string;
  idsDir: string;
  binDir: string;
  pilot: string;
  flakeCtl: string;
  /** Environment for flake-ctl / flakes: FLAKES_CONFIG + CONTAINERS_CONF, storage via podman_storage_conf. */
  env: NodeJS.ProcessEnv;
  /** Environment for the test's own podman calls. */
  podmanEnv: NodeJS.ProcessEnv;
  podman(args: string[], input?: string): { status: number; stdout: string; stderr: string };
  cleanup(): void;
}

export function createPodmanFixture(prefix = "eos-flake-test-"): Promise<PodmanFixture> {
  return setup(prefix);
}

async function setup(prefix: string): Promise<PodmanFixture> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const storageConf = join(dir, "storage.conf");
  writeFileSync(
    storageConf,
    `[storage]\ndriver = "overlay"\ngraphroot = "${dir}/storage"\nrunroot = "${dir}/run"\n`,
  );
  const flakesDir = join(dir, "flakes");
  const idsDir = join(dir, "ids");
  const binDir = join(dir, "bin");
  mkdirSync(binDir, { recursive: true });
  const pilot = await bundleBin("podman-pilot", binDir);
  const flakeCtl = await bundleBin("flake-ctl", binDir);
  const flakesConfig = join(dir, "flakes.yml");
  writeFileSync(
    flakesConfig,
    [
      "generic:",
      `  flakes_dir: ${flakesDir}`,
      `  podman_ids_dir: ${idsDir}`,
      `  firecracker_ids_dir: ${idsDir}`,
      `  podman_storage_conf: ${storageConf}`,
      `  podman_pilot: ${pilot}`,
      "",
    ].join("\n"),
  );
  const base = { ...process.env };
  delete base.CONTAINERS_STORAGE_CONF;
  delete base.PILOT_DEBUG;
  // The pilot's parsed-flake cache goes into the fixture too (not /run/eos-flakes).
  const env = {
    ...base,
    CONTAINERS_CONF,
    FLAKES_CONFIG: flakesConfig,
    EOS_FLAKES_CACHE_DIR: join(dir, "cache"),
  };
  const podmanEnv = { ...base, CONTAINERS_CONF, CONTAINERS_STORAGE_CONF: storageConf };
  const podman = (args: string[], input?: string) => {
    const r = spawnSync("podman", args, { env: podmanEnv, encoding: "utf8", input: input ?? "" });
    return { status: r.status ?? 128, stdout: r.stdout, stderr: r.stderr };
  };
  const cleanup = () => {
    podman(["rm", "--all", "--force", "--time", "0"]);
    podman(["image", "rm", "--all", "--force"]);
    // containers/storage keeps <graphroot>/overlay bind-mounted; release it before deleting.
    const mounts = readFileSync("/proc/self/mountinfo", "utf8")
      .split("\n")
      .map((l) => l.split(" ")[4])
      .filter((m): m is string => m !== undefined && m.startsWith(`${dir}/`))
      .sort((a, b) => b.length - a.length);
    for (const m of mounts) spawnSync("umount", ["-l", m]);
    rmSync(dir, { recursive: true, force: true });
  };
  return {
    dir,
    storageConf,
    flakesConfig,
    flakesDir,
    idsDir,
    binDir,
    pilot,
    flakeCtl,
    env,
    podmanEnv,
    podman,
    cleanup,
  };
}

/** A rootfs tree imported as an image; `files` maps paths to contents (mode 0755 for /usr/bin). */
export function importImage(
  fx: PodmanFixture,
  name: string,
  files: Record<string, string>,
  withBusybox = false,
): string {
  const root = mkdtempSync(join(fx.dir, "rootfs-"));
  if (withBusybox) {
    mkdirSync(join(root, "bin"), { recursive: true });
    mkdirSync(join(root, "tmp"), { recursive: true, mode: 0o1777 });
    execFileSync("cp", ["/bin/busybox", join(root, "bin", "busybox")]);
    const applets = execFileSync("/bin/busybox", ["--list"], { encoding: "utf8" })
      .split("\n")
      .filter(Boolean);
    for (const applet of applets) {
      if (applet !== "busybox") symlinkSync("busybox", join(root, "bin", applet));
    }
  }
  for (const [path, content] of Object.entries(files)) {
    const full = join(root, path);
    mkdirSync(join(full, ".."), { recursive: true });
    writeFileSync(full, content);
    chmodSync(full, path.includes("/bin/") ? 0o755 : 0o644);
  }
  const tar = `${root}.tar`;
  execFileSync("tar", ["-C", root, "-cf", tar, "."]);
  const r = fx.podman(["import", tar, name]);
  rmSync(root, { recursive: true, force: true });
  rmSync(tar, { force: true });
  if (r.status !== 0) throw new Error(`podman import ${name}: ${r.stderr}`);
  return r.stdout.trim().split("\n").pop() ?? "";
}

export interface RunResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a command (a flake link, flake-ctl) and collects its output separately. */
export function run(
  cmd: string,
  args: string[],
  opts: SpawnOptions & { input?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? 600_000;
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, { ...opts, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    // A command that hangs fails its test with what it printed, instead of holding the tier.
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(
        new Error(
          `${cmd} ${args.join(" ")}: no exit within ${timeoutMs / 1000} s\nstdout: ${stdout.slice(-2000)}\nstderr: ${stderr.slice(-2000)}`,
        ),
      );
    }, timeoutMs);
    child.stdout?.on("data", (b: Buffer) => (stdout += b.toString()));
    child.stderr?.on("data", (b: Buffer) => (stderr += b.toString()));
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("close", (status, signal) => {
      clearTimeout(timer);
      resolvePromise({ status, signal, stdout, stderr });
    });
    // A command that exits without reading its input closes the pipe: that is not a test failure.
    child.stdin?.on("error", () => undefined);
    child.stdin?.end(opts.input ?? "");
  });
}
