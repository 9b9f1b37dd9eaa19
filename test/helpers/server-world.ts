import { mkdtemp, mkdir, writeFile, copyFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeSampleImage, xzFile } from "./sample-image.ts";
import { runEos, mustRun } from "./run.ts";
import { startOrigin, type Origin } from "./origin.ts";

export interface World {
  dir: string;
  originDir: string;
  imagesDir: string;
  keysDir: string;
  otherKeysDir: string;
  config: string;
  origin: Origin;
}

/** A signed sample image at the origin under NAME.raw.xz (+ manifest, sig). */
export async function releaseImage(
  world: World,
  name: string,
  version: string,
  options: {
    key?: string;
    payloadBytes?: number;
    rootSizeMiB?: number;
    firmwareFiles?: Record<string, string>;
    compress?: (p: string) => Promise<string>;
    /** The image name and architecture the manifest says (default: NAME and this machine's). */
    manifestName?: string;
    arch?: string;
    /** Same seed, same payload: versions that differ by little (default: the version). */
    seed?: string;
    /** A root slot with a dm-verity tree, as eos build makes it. */
    verity?: boolean;
    /** A disk image made elsewhere (e.g. an RPI disk), signed and published instead of a sample image. */
    disk?: string;
    /** Changes the disk image after it is built, before it is signed (what another builder might make). */
    beforeSign?: (raw: string) => Promise<void>;
  } = {},
): Promise<string> {
  const raw = join(world.dir, "build", `${name}.raw`);
  await mkdir(join(world.dir, "build"), { recursive: true });
  if (options.disk) await copyFile(options.disk, raw);
  else
    await makeSampleImage(raw, {
      version,
      ...(options.payloadBytes ? { payloadBytes: options.payloadBytes } : {}),
      ...(options.rootSizeMiB ? { rootSizeMiB: options.rootSizeMiB } : {}),
      ...(options.seed ? { seed: options.seed } : {}),
      ...(options.firmwareFiles ? { firmwareFiles: options.firmwareFiles } : {}),
      ...(options.verity ? { verity: true } : {}),
    });
  await options.beforeSign?.(raw);
  const signed = await runEos("eos", [
    "manifest",
    raw,
    "--key",
    options.key ?? join(world.keysDir, "release.key"),
    "--version",
    version,
    ...(options.manifestName ? ["--name", options.manifestName] : []),
    ...(options.arch ? ["--arch", options.arch] : []),
  ]);
  if (signed.code !== 0) throw new Error(signed.stderr);
  const compressed = await (options.compress ?? xzFile)(raw);
  const suffix = compressed.slice(raw.length);
  await copyFile(compressed, join(world.originDir, `${name}.raw${suffix}`));
  await copyFile(`${raw}.manifest.json`, join(world.originDir, `${name}.raw.manifest.json`));
  await copyFile(`${raw}.manifest.json.sig`, join(world.originDir, `${name}.raw.manifest.json.sig`));
  return raw;
}

export async function makeWorld(): Promise<World> {
  const dir = await mkdtemp(join(tmpdir(), "eos-server-"));
  const world: World = {
    dir,
    originDir: join(dir, "origin"),
    imagesDir: join(dir, "images"),
    keysDir: join(dir, "keys"),
    otherKeysDir: join(dir, "other-keys"),
    config: join(dir, "os-update.yml"),
    origin: undefined as unknown as Origin,
  };
  await mkdir(world.originDir);
  await mustRun(process.execPath, [
    join(import.meta.dirname, "../../dist/eos.mjs"),
    "keygen",
    "--out",
    world.keysDir,
  ]);
  await mustRun(process.execPath, [
    join(import.meta.dirname, "../../dist/eos.mjs"),
    "keygen",
    "--out",
    world.otherKeysDir,
  ]);
  world.origin = await startOrigin(world.originDir);
  return world;
}

export async function writeServerConfig(
  world: World,
  images: Array<Record<string, unknown>>,
  extra = "",
): Promise<void> {
  const lines = ["---", "update:"];
  for (const image of images) {
    lines.push("  -");
    for (const [k, v] of Object.entries(image))
      lines.push(`    ${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`);
  }
  lines.push(`images_dir: ${world.imagesDir}`, "keys:", `  - ${join(world.keysDir, "release.pub")}`, extra);
  await writeFile(world.config, `${lines.join("\n")}\n`);
}
