/**
 * `eos build`, the whole pipeline: description → root tree → root slot file
 * system → ESP → GPT disk → .raw.xz → signed manifest. Each step logs one
 * line with its duration, so a CI log shows where the time goes.
 */
import { mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { EosError } from "../../core/errors.ts";
import {
  parseImageDescription,
  SUITE_EPOCH,
  type ImageDescription,
  type Profile,
} from "../../core/image/description.ts";
import { hostArchitecture, type Architecture } from "../../core/image/arch.ts";
import { EC2_INIT_UNIT, ec2RootFiles, profileDescription } from "../../core/image/ec2.ts";
import { planLayout } from "../../core/image/layout.ts";
import { rpiSuite } from "../../core/image/rpi.ts";
import { verityParameter, type VerityRecord } from "../../core/verity.ts";
import type { Context } from "../context.ts";
import { sourceDateEpoch, writeManifest } from "../release.ts";
import { addVerity, assembleDisk, compressXz, hashPadded, makeEsp, makeRootImage } from "./disk.ts";
import { buildContainerStore } from "./containers.ts";
import { foreignGrubModules, makeBaseRoot } from "./base-root.ts";
import { rpiBootFiles } from "./rpi-boot.ts";
import { RootCache, rootCacheDir, rootCacheKeep } from "./root-cache.ts";
import { buildRootTree, rootBuildEnv } from "./rootfs.ts";
import { imageKeys } from "./image-keys.ts";
import { defaultDistDir, projectServerUnits, projectUnit } from "./project.ts";

export interface BuildOptions {
  description: string;
  profile: Profile;
  /** Default x86_64. */
  architecture?: Architecture;
  /** Build the base root with mmdebstrap even if the root cache has it (and do not store it). */
  noCache?: boolean;
  outDir: string;
  /** Release private keys: sign the manifest; their public keys become trusted in the image. */
  keys: string[];
  /** Directory with the EOS bundles; default: the checkout's dist/. */
  distDir?: string;
  /** Scratch directory (default OUT/.work-NAME); removed afterwards unless keepWork. */
  workDir?: string;
  keepWork?: boolean;
  /** Skip NAME.raw.xz (tests that only boot the raw image). */
  noXz?: boolean;
  /** Overrides the description's version (v1/v2 of one description). */
  version?: string;
}

export interface BuildResult {
  name: string;
  architecture: Architecture;
  /** Whether the base root came from the root cache. */
  baseRootCached: boolean;
  version: string;
  profile: Profile;
  raw: string;
  xz: string | undefined;
  manifest: string | undefined;
  rootFsBytes: number;
  rootSlotBytes: number;
  /** sha256 of the whole slot A partition: the manifest's root hash and grubenv's eos_A_sha256. */
  rootSha256: string;
  /** The slot's dm-verity tree, when the description keeps root.verity on. */
  verity: VerityRecord | undefined;
  rawBytes: number;
  xzBytes: number | undefined;
  kernel: string;
  commands: string[];
  sourceDateEpoch: number;
  seconds: Record<string, number>;
}

/** OUT/<this>.raw, .build.json, ...: x86_64 keeps its historical NAME; other architectures say what they are, as the seed does. */
export function imageFileBase(name: string, architecture: Architecture, profile: Profile): string {
  return architecture === "x86_64" ? name : `${name}.${architecture}-${profile}`;
}

export async function loadDescription(path: string): Promise<ImageDescription> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch {
    throw new EosError("NOT_FOUND", `image description ${path} does not exist`);
  }
  return parseImageDescription(text, path);
}

export async function buildImage(ctx: Context, o: BuildOptions): Promise<BuildResult> {
  const log = (line: string) => ctx.stderr.write(`eos build: ${line}\n`);
  const descPath = resolve(o.description);
  const base = dirname(descPath);
  const parsed = await loadDescription(descPath);
  const profiled = profileDescription(parsed, o.profile, descPath);
  const desc: ImageDescription = o.version ? { ...profiled.desc, version: o.version } : profiled.desc;
  if (o.version && !/^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$/.test(o.version))
    throw new EosError("USAGE", `--version ${o.version}: letters, digits and . _ + ~ - only`);
  if (process.getuid?.() !== 0) {
    throw new EosError("BUILD", "eos build needs root for the root tree (mmdebstrap --mode=root, chroot)", {
      hint: "run it as root or with sudo; the disk assembly itself is rootless",
    });
  }
  // Reproducible by default: the clock only when asked for (SOURCE_DATE_EPOCH=$(date +%s)).
  const asked = sourceDateEpoch(ctx.env);
  const epoch = asked ?? desc.epoch ?? SUITE_EPOCH[desc.distribution.suite];
  const epochFrom =
    asked !== undefined
      ? "SOURCE_DATE_EPOCH"
      : desc.epoch !== undefined
        ? "the description's epoch"
        : `${desc.distribution.suite}'s release date; set epoch in the description to change it`;
  const architecture = o.architecture ?? "x86_64";
  if (o.profile === "RPI" && architecture !== "aarch64")
    throw new EosError("USAGE", `--profile RPI builds for the Raspberry Pi 4, an aarch64 machine`, {
      hint: "pass --arch aarch64",
    });
  if (desc.eos.node === "host" && hostArchitecture(process.arch) !== architecture) {
    throw new EosError(
      "CONFIG",
      `${descPath}: eos.node: host ships this machine's ${process.arch} node binary, which cannot run on ${architecture}`,
      {
        hint: `set eos.node to debian (bookworm's nodejs 18.20, within the package's engines) or none; images/aarch64.yaml does`,
      },
    );
  }
  const layout = planLayout(desc, o.profile, architecture);
  const fileBase = imageFileBase(desc.name, architecture, o.profile);
  const outDir = resolve(o.outDir);
  await mkdir(outDir, { recursive: true });
  const work = resolve(o.workDir ?? join(outDir, `.work-${fileBase}`));
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  const overlays = desc.files.map((f) => (isAbsolute(f) ? f : resolve(base, f)));
  const keys = await imageKeys(desc, base, o.keys);
  const distDir = o.distDir ?? defaultDistDir();
  const seconds: Record<string, number> = {};
  const step = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
    const t0 = performance.now();
    const value = await fn();
    seconds[name] = Math.round((performance.now() - t0) / 100) / 10;
    log(`${name}: done in ${seconds[name]} s`);
    return value;
  };
  log(
    `${desc.name} ${desc.version}, ${architecture}, profile ${o.profile}, SOURCE_DATE_EPOCH=${epoch} (${epochFrom}), work ${work}`,
  );
  for (const note of profiled.notes) log(`profile ${o.profile}: ${note}`);
  if (keys.release.size === 0)
    log("warning: no trusted release keys (update.keys or --key): os-update will refuse updates");
  const tree = join(work, "tree");
  const bootDebs = join(work, "boot-debs");
  const cache = o.noCache
    ? undefined
    : new RootCache(rootCacheDir(ctx.env), ctx.proc, { keep: rootCacheKeep(ctx.env) });
  const baseRoot = await step("base root", () =>
    makeBaseRoot({
      desc,
      architecture,
      tree,
      bootDir: bootDebs,
      sourceDateEpoch: epoch,
      cache,
      env: rootBuildEnv(epoch),
      log,
      proc: ctx.proc,
      signal: ctx.signal,
    }),
  );
  const updateCommitUnit = await projectUnit("update_commit.service");
  const serverUnits = await projectServerUnits();
  const profileFiles = o.profile === "EC2" ? ec2RootFiles(await projectUnit(EC2_INIT_UNIT)) : [];
  const { kernel, commands } = await step("root tree", () =>
    buildRootTree({
      desc,
      tree,
      overlays,
      keys,
      distDir,
      hostNode: process.execPath,
      updateCommitUnit,
      serverUnits,
      architecture,
      profileFiles,
      sourceDateEpoch: epoch,
      log,
      signal: ctx.signal,
      proc: ctx.proc,
    }),
  );
  log(`root tree: kernel ${kernel}; EOS commands: ${commands.length > 0 ? commands.join(", ") : "none"}`);
  if (desc.containers.length > 0)
    await step("read-only container store", () =>
      buildContainerStore({
        desc,
        base,
        architecture,
        tree,
        work,
        sourceDateEpoch: epoch,
        cacheDir: o.noCache ? undefined : `${rootCacheDir(ctx.env)}-containers`,
        env: rootBuildEnv(epoch),
        log,
        proc: ctx.proc,
        ...(ctx.signal ? { signal: ctx.signal } : {}),
      }),
    );
  const rootImg = join(work, "root.img");
  const rootFsBytes = await step(`root file system (squashfs ${desc.root.compression})`, () =>
    makeRootImage(ctx.proc, desc, tree, rootImg, epoch, ctx.signal),
  );
  const verity = desc.root.verity
    ? await step("dm-verity hash tree (veritysetup format)", () => addVerity(ctx.proc, rootImg, ctx.signal))
    : undefined;
  const slotBytes = verity?.bytes ?? rootFsBytes;
  log(
    `root file system: ${(rootFsBytes / 1048576).toFixed(1)} MiB${verity ? ` + ${((slotBytes - rootFsBytes) / 1048576).toFixed(1)} MiB dm-verity tree (root hash ${verity.record.root_hash.slice(0, 16)}…)` : ""} of a ${layout.slotA.size / 1048576} MiB slot`,
  );
  if (slotBytes > layout.slotA.size) {
    throw new EosError(
      "BUILD",
      `the root file system${verity ? " and its dm-verity tree" : ""} (${slotBytes} bytes) do not fit partitions.root (${layout.slotA.size} bytes)`,
      { hint: `raise partitions.root in ${descPath} or drop packages` },
    );
  }
  const rootSha256 = await step("root slot hash", () => hashPadded(rootImg, layout.slotA.size));
  const espImg = join(work, "esp.img");
  const grubModuleDir = await foreignGrubModules(ctx.proc, architecture, bootDebs, work);
  const espExtras =
    o.profile === "RPI"
      ? await step("RPI firmware, U-Boot and device trees", async () => ({
          fat32: true,
          files: await rpiBootFiles({
            proc: ctx.proc,
            rpi: rpiSuite(desc.distribution.suite, descPath),
            mirror: desc.distribution.mirror,
            cacheDir: `${rootCacheDir(ctx.env)}-debs`,
            work,
            tree,
            kernel,
            log,
            ...(ctx.signal ? { signal: ctx.signal } : {}),
          }),
        }))
      : undefined;
  await step(`ESP (GRUB EFI, grub.cfg, grubenv${espExtras ? ", Pi firmware" : ""})`, () =>
    makeEsp(
      ctx.proc,
      desc,
      layout,
      work,
      espImg,
      epoch,
      {
        version: desc.version,
        sha256: rootSha256,
        size: layout.slotA.size,
        verity: verity ? verityParameter(verity.record) : undefined,
      },
      { image: desc.name, architecture },
      grubModuleDir,
      espExtras,
    ),
  );
  const raw = join(outDir, `${fileBase}.raw`);
  await step("GPT disk", () => assembleDisk(layout, espImg, rootImg, raw));
  let xz: string | undefined;
  if (!o.noXz) {
    xz = `${raw}.xz`;
    await step("xz", () => compressXz(ctx.proc, raw, xz as string, ctx.signal));
  }
  let manifest: string | undefined;
  if (o.keys.length > 0) {
    manifest = await step("signed manifest", async () => {
      const env = { ...ctx.env, SOURCE_DATE_EPOCH: String(epoch) };
      const written = await writeManifest({ ...ctx, env }, raw, {
        keys: o.keys,
        name: desc.name,
        version: desc.version,
        arch: architecture,
        quiet: !ctx.interactive,
      });
      return written.manifestPath;
    });
    const written = JSON.parse(await readFile(manifest, "utf8")) as {
      partitions?: { root?: { sha256?: string; verity?: { root_hash?: string } } };
    };
    if (written.partitions?.root?.sha256 !== rootSha256) {
      throw new EosError(
        "BUILD",
        `${manifest}: root sha256 differs from the one recorded in grubenv (${rootSha256})`,
      );
    }
    // The manifest reads the root hash back from the disk; veritysetup computed it from the data.
    if (written.partitions?.root?.verity?.root_hash !== verity?.record.root_hash) {
      throw new EosError(
        "BUILD",
        `${manifest}: dm-verity root hash ${written.partitions?.root?.verity?.root_hash ?? "(none)"} differs from veritysetup's (${verity?.record.root_hash ?? "none"})`,
      );
    }
  } else {
    log("no --key: no signed manifest written");
  }
  if (!o.keepWork) await rm(work, { recursive: true, force: true });
  const result: BuildResult = {
    name: desc.name,
    architecture,
    baseRootCached: baseRoot.cached,
    version: desc.version,
    profile: o.profile,
    raw,
    xz,
    manifest,
    rootFsBytes,
    rootSlotBytes: layout.slotA.size,
    rootSha256,
    verity: verity?.record,
    rawBytes: (await stat(raw)).size,
    xzBytes: xz ? (await stat(xz)).size : undefined,
    kernel,
    commands,
    sourceDateEpoch: epoch,
    seconds,
  };
  await writeFile(join(outDir, `${fileBase}.build.json`), `${JSON.stringify(result, null, 2)}\n`);
  return result;
}
