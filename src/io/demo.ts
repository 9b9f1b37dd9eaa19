/**
 * `eos demo`: the end-to-end showcase. Builds v1 and v2 of the default image
 * (v2: another VERSION and one more package), publishes v2 with the update
 * server on loopback, boots v1 in QEMU and, inside the guest, checks for the
 * update, applies it (kexec into slot B), lets update_commit.service commit,
 * shows v2 running, rolls back with a reboot and shows v1 again. Each step
 * prints its time; the summary ends the run. runDemo() is also what the vm
 * tier drives, so the demo and its proof are the same code.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import type { Server } from "node:http";
import { dirname, isAbsolute, join, relative, resolve } from "node:path";
import { stringify } from "yaml";
import { parseYamlData } from "../core/yaml-input.ts";
import type { Architecture } from "../core/image/arch.ts";
import { buildImage, type BuildResult } from "./image/build.ts";
import { repoRoot } from "./image/project.ts";
import type { Context } from "./context.ts";
import { decodeDeltaIndex } from "../core/update/delta-index.ts";
import { fetchAndPublish } from "./server/fetch.ts";
import { PublishedImages } from "./server/published.ts";
import { generateReleaseKeys, loadTrustedKeys } from "./keys.ts";
import { jsonLogger, silentLogger } from "./log.ts";
import { DEFAULT_LIMITS } from "./watchdog.ts";
import { Vm } from "./machine/qemu.ts";
import { TokenStore } from "./server/tokens.ts";
import { awaitReports, DEMO_REPORTS, startDemoServer } from "./demo-server.ts";
import { guestState, waitForCommit, type GuestState } from "./demo-guest.ts";
import type { DeviceEventType } from "../core/fleet/events.ts";
import { LOGIN_PROMPT } from "../core/machine/qemu-machine.ts";

export interface DemoOptions {
  workDir: string;
  description: string;
  port: number;
  /**
   * The package that makes v2 visibly different. Without one, v2 is v1 with a new
   * version: the same base root, which spares an emulated arm64 build a second one.
   */
  extraPackage?: string;
  rebuild: boolean;
  log: (line: string) => void;
  /** The images' and the VM's architecture (default x86_64; aarch64 runs emulated on x86_64). */
  architecture?: Architecture;
  /** Leave the VM and the server running at the end (the test adds its own steps then). */
  keepVm?: boolean;
  /** How far the cycle goes: through the rollback to v1 (the default), or only until v2 is committed. */
  through?: "commit" | "rollback";
}

export interface DemoStep {
  name: string;
  seconds: number;
  detail: string;
}

export interface DemoResult {
  steps: DemoStep[];
  v1: BuildResult;
  v2: BuildResult;
  states: Record<"booted" | "updated", GuestState> & { rolledBack?: GuestState };
  seconds: number;
  /** Only with keepVm: the VM (v1 after the rollback, v2 if the cycle stopped at the commit) and the server. */
  vm?: Vm;
  server?: Server;
  /** What the device reported to the demo's server during the demo, oldest first. */
  reports: DeviceEventType[];
  close(): Promise<void>;
}

const BOOT_MS = 8 * 60_000;

async function buildVersion(
  ctx: Context,
  o: DemoOptions,
  version: string,
  desc: Record<string, unknown>,
  releaseKey: string,
): Promise<{ result: BuildResult; cached: boolean }> {
  const text = stringify(desc);
  const arch = o.architecture ?? "x86_64";
  const outDir = join(o.workDir, arch === "x86_64" ? `v${version}` : `${arch}-v${version}`);
  const stamp = join(outDir, "description.sha256");
  // What goes into the image besides the description: the device's command bundles.
  const hash = createHash("sha256").update(text).update(arch);
  const dist = join(repoRoot() ?? ".", "dist");
  // The entries and the chunks they share (a change may land in a chunk only).
  const bundles = existsSync(dist) ? (await readdir(dist, { recursive: true })).sort() : [];
  for (const n of bundles) {
    if (n.endsWith(".mjs") && n !== "eos.mjs") hash.update(n).update(await readFile(join(dist, n)));
  }
  const digest = hash.digest("hex");
  const resultFile = join(outDir, "demo-build.json");
  if (!o.rebuild && existsSync(resultFile) && (await readFile(stamp, "utf8").catch(() => "")) === digest) {
    return { result: JSON.parse(await readFile(resultFile, "utf8")) as BuildResult, cached: true };
  }
  await mkdir(outDir, { recursive: true });
  const description = join(outDir, "description.yaml");
  await writeFile(description, text);
  const result = await buildImage(ctx, {
    description,
    profile: "AB",
    architecture: arch,
    outDir,
    keys: [releaseKey],
    noXz: true,
    workDir: join(o.workDir, "work", arch === "x86_64" ? version : `${arch}-${version}`),
  });
  await writeFile(resultFile, JSON.stringify(result));
  await writeFile(stamp, digest);
  return { result, cached: false };
}

interface DemoInputs {
  keysDir: string;
  sshKey: string;
  releaseKey: string;
  tokensDir: string;
  descFor: (version: string, extra: string[]) => Record<string, unknown>;
}

/** The demo's keys, device token and descriptions, made once in the work directory and reused. */
async function demoInputs(ctx: Context, o: DemoOptions): Promise<DemoInputs> {
  await mkdir(o.workDir, { recursive: true });
  const keysDir = join(o.workDir, "keys");
  const releaseKey = join(keysDir, "release.key");
  if (!existsSync(releaseKey)) await generateReleaseKeys(keysDir, true);
  const sshKey = join(keysDir, "id_ed25519");
  if (!existsSync(sshKey))
    await ctx.proc.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "eos-demo", "-f", sshKey]);

  // The device's fleet credential: a bearer token, baked into the image, its hash on the server.
  const tokensDir = join(o.workDir, "tokens");
  const fleetDir = join(o.workDir, "fleet-files");
  const tokenFile = join(fleetDir, "usr/share/eos/fleet/token");
  if (!existsSync(tokenFile) || !existsSync(join(tokensDir, "demo-device"))) {
    const token = await new TokenStore(tokensDir).add("demo-device");
    await mkdir(dirname(tokenFile), { recursive: true });
    await writeFile(tokenFile, `${token}\n`, { mode: 0o600 });
    await chmod(tokenFile, 0o600);
  }

  const base = parseYamlData(await readFile(o.description, "utf8"), o.description) as Record<string, unknown>;
  const sshPub = (await readFile(`${sshKey}.pub`, "utf8")).trim();
  const descDir = dirname(resolve(o.description));
  const descFor = (version: string, extra: string[]): Record<string, unknown> => {
    const d = structuredClone(base);
    d.version = version;
    d.pretty_name = `EOS ${version} (demo)`;
    d.files = [...((d.files as string[] | undefined) ?? []).map((f) => resolve(descDir, f)), fleetDir];
    d.packages = [...((d.packages as string[] | undefined) ?? []), ...extra];
    d.users = {
      root: { ssh_authorized_keys: [sshPub], autologin_serial: true },
    };
    const update = (d.update as Record<string, unknown> | undefined) ?? {};
    d.update = { ...update, url: `http://10.0.2.2:${o.port}` };
    return d;
  };
  return { keysDir, sshKey, releaseKey, tokensDir, descFor };
}

/**
 * Builds (or finds) the demo's v1 and v2 as runDemo would, without booting anything: the
 * test script builds them in the background while other tiers run, and runDemo reuses them.
 */
export async function buildDemoImages(
  ctx: Context,
  o: DemoOptions,
): Promise<Array<{ result: BuildResult; cached: boolean }>> {
  const { releaseKey, descFor } = await demoInputs(ctx, o);
  return [
    await buildVersion(ctx, o, "1.0.0", descFor("1.0.0", []), releaseKey),
    await buildVersion(ctx, o, "2.0.0", descFor("2.0.0", v2Packages(o)), releaseKey),
  ];
}

/** What v2 adds to v1's packages. */
function v2Packages(o: DemoOptions): string[] {
  return o.extraPackage ? [o.extraPackage] : [];
}

/** The v1 build step's name: the description this demo builds, as the checkout names it. */
export function buildStepName(description: string, repo: string | undefined): string {
  const from = repo ? relative(repo, resolve(description)) : description;
  const shown = from && !from.startsWith("..") && !isAbsolute(from) ? from : description;
  return `build v1.0.0 (eos build ${shown})`;
}

export async function runDemo(ctx: Context, o: DemoOptions): Promise<DemoResult> {
  const started = performance.now();
  // Bounds, not expectations: an arm64 guest emulated on x86_64 runs several times slower.
  const slow = (ms: number) => (o.architecture === "aarch64" && process.arch !== "arm64" ? 3 * ms : ms);
  const steps: DemoStep[] = [];
  const step = async <T>(name: string, fn: () => Promise<[T, string]>): Promise<T> => {
    const t = performance.now();
    o.log(`▶ ${name}`);
    const [value, detail] = await fn();
    const seconds = (performance.now() - t) / 1000;
    steps.push({ name, seconds, detail });
    o.log(`  ✓ ${detail} (${seconds.toFixed(1)} s)`);
    return value;
  };
  const { keysDir, sshKey, releaseKey, tokensDir, descFor } = await demoInputs(ctx, o);

  const v1 = await step(buildStepName(o.description, repoRoot()), async () => {
    const { result, cached } = await buildVersion(ctx, o, "1.0.0", descFor("1.0.0", []), releaseKey);
    return [
      result,
      `${result.raw}: root ${(result.rootFsBytes / 2 ** 20).toFixed(0)} MiB${cached ? " (reused)" : ""}`,
    ];
  });
  const v2Name = o.extraPackage ? `+ ${o.extraPackage}` : "the same packages, a new version";
  const v2 = await step(`build v2.0.0 (${v2Name})`, async () => {
    const { result, cached } = await buildVersion(
      ctx,
      o,
      "2.0.0",
      descFor("2.0.0", v2Packages(o)),
      releaseKey,
    );
    return [
      result,
      `${result.raw}: root ${(result.rootFsBytes / 2 ** 20).toFixed(0)} MiB${cached ? " (reused)" : ""}`,
    ];
  });

  const store = new PublishedImages(join(o.workDir, "os-images"));
  const server = await step(
    `publish v1, then v2 with a delta from v1; serve on 127.0.0.1:${o.port} (guest: 10.0.2.2)`,
    async () => {
      const name = v2.name;
      const fetchOptions = {
        trustedKeys: await loadTrustedKeys([join(keysDir, "release.pub")]),
        logger: silentLogger(),
        now: ctx.now,
        proc: ctx.proc,
        limits: DEFAULT_LIMITS,
      };
      for (const v of [v1, v2])
        await fetchAndPublish(
          store,
          { name, image: `file://${v.raw}`, manifest: `file://${v.raw}.manifest.json` },
          fetchOptions,
        );
      const current = await store.current(name);
      const delta = current?.deltaIndexBytes
        ? decodeDeltaIndex(current.deltaIndexBytes).deltas.find((d) => d.from_version === "1.0.0")
        : undefined;
      const outcome = {
        status: "published",
        version: `${current?.manifest.version ?? "?"}, delta from 1.0.0: ${delta ? `${delta.size} bytes of ${current?.manifest.partitions.root.size} (${((100 * delta.size) / (current?.manifest.partitions.root.size ?? 1)).toFixed(2)} %)` : "none"}`,
      };
      const srv = await startDemoServer(ctx, {
        store,
        tokensDir,
        workDir: o.workDir,
        port: o.port,
        logger: process.env.EOS_DEMO_SERVER_LOG ? jsonLogger(ctx.stderr) : silentLogger(),
      });
      return [
        srv,
        `os-update-server fetch: ${outcome.status} ${outcome.version}; serving with a device token`,
      ];
    },
  );

  let vm: Vm | undefined;
  const startMachine = async (image: string, reuseDisk: boolean): Promise<Vm> => {
    const machine = await Vm.start({
      image,
      workDir: join(o.workDir, "vm"),
      sshKey,
      registryDiskBytes: 0,
      architecture: o.architecture ?? "x86_64",
      noReboot: true,
      reuseDisk,
    });
    // Not yet `vm`, which close() kills: a boot that never answers must not leave QEMU running.
    try {
      await machine.waitForConsole(LOGIN_PROMPT, { timeoutMs: slow(BOOT_MS) });
      await machine.waitForSsh({ timeoutMs: slow(3 * 60_000) });
    } catch (error) {
      await machine.kill();
      throw error;
    }
    return machine;
  };
  const close = async () => {
    await vm?.kill();
    await server.close();
  };
  const since = ctx.now();
  try {
    vm = await step("boot v1 (eos run, TCG unless KVM works)", async () => {
      const machine = await startMachine(v1.raw, false);
      return [machine, `${machine.accel}: login and SSH after ${machine.uptime().toFixed(0)} s`];
    });
    const booted = await step("in the guest: fleet --getkey; os-update --check", async () => {
      await vm!.sshOk(["fleet", "--getkey"]);
      const s = await guestState(vm!);
      return [
        s,
        `running ${s.version} from slot ${s.slot}; --check exit ${s.checkExit} (1 = update available)`,
      ];
    });
    await step("in the guest: os-update --apply (writes slot B, verifies, kexec)", async () => {
      const mark = vm!.mark();
      const r = await vm!.ssh(["os-update", "--apply"], { timeoutMs: slow(15 * 60_000) });
      const out = r.stdout.trim().split("\n");
      await vm!.waitForConsole(LOGIN_PROMPT, { timeoutMs: slow(BOOT_MS), since: mark });
      await vm!.waitForSsh({ timeoutMs: slow(3 * 60_000) });
      return [
        undefined,
        `${out.find((l) => l.startsWith("wrote")) ?? out.at(-1) ?? ""}; back up after kexec`,
      ];
    });
    const updated = await step("update_commit.service commits slot B", async () => {
      const unit = await waitForCommit(vm!, slow(5 * 60_000));
      await vm!.sshOk(["fleet", "--getkey"]); // /run is new after the kexec
      const s = await guestState(vm!);
      let extra = "";
      if (o.extraPackage) {
        const found = await vm!.ssh(["sh", "-c", 'command -v "$1"', "sh", o.extraPackage]);
        extra = `; ${o.extraPackage} ${found.code === 0 ? "present" : "missing"}`;
      }
      return [
        s,
        `update_commit.service ${unit}; running ${s.version} from slot ${s.slot}, default ${s.grubenv.eos_default}${extra}; --check exit ${s.checkExit}`,
      ];
    });
    let rolledBack: GuestState | undefined;
    if ((o.through ?? "rollback") === "rollback") {
      await step("in the guest: os-update --rollback --reboot", async () => {
        await vm!.ssh(["os-update", "--rollback", "--reboot"], { timeoutMs: slow(5 * 60_000) });
        // The guest's reboot ends QEMU (-no-reboot) and the machine is switched on again: OVMF's
        // warm reset under TCG took from 2 to over 8 minutes here, which is QEMU's and not the
        // update's; a power cycle goes through the firmware and GRUB the same way.
        await vm!.waitForExit({ timeoutMs: slow(5 * 60_000), what: "the guest's reboot" });
        vm = await startMachine(v1.raw, true);
        return [
          undefined,
          `rebooted; GRUB chose the default slot; login and SSH after ${vm.uptime().toFixed(0)} s`,
        ];
      });
      rolledBack = await step("v1 runs again", async () => {
        await vm!.sshOk(["fleet", "--getkey"]);
        const s = await guestState(vm!);
        return [
          s,
          `running ${s.version} from slot ${s.slot}, default ${s.grubenv.eos_default}; --check exit ${s.checkExit}`,
        ];
      });
    }
    // The reports of --rollback and of the boot after it may still be on their way.
    const expected = rolledBack ? DEMO_REPORTS : DEMO_REPORTS.filter((t) => t !== "rolled_back");
    const reports = await step("the server's record of the device", async () => {
      const seen = await awaitReports(server, "demo-device", since, expected, slow(2 * 60_000));
      const missing = expected.filter((t) => !seen.includes(t));
      return [
        seen,
        `demo-device reported ${[...new Set(seen)].join(", ")}${missing.length ? `; missing ${missing.join(", ")}` : ""}`,
      ];
    });
    const seconds = (performance.now() - started) / 1000;
    o.log("");
    o.log("summary");
    for (const s of steps) o.log(`  ${s.seconds.toFixed(1).padStart(7)} s  ${s.name}`);
    o.log(`  ${seconds.toFixed(1).padStart(7)} s  total`);
    const result: DemoResult = {
      steps,
      v1,
      v2,
      states: { booted, updated, ...(rolledBack ? { rolledBack } : {}) },
      reports,
      seconds,
      close,
    };
    if (o.keepVm) return { ...result, vm, server: server.server };
    await vm.powerOff();
    await close();
    return result;
  } catch (error) {
    await close();
    throw error;
  }
}
