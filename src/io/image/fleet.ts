/**
 * The fleet container's inputs from the root tree and its flake file in it
 * (src/core/image/fleet.ts says what they are). The credentials come from
 * the tree after the description's files: were copied, so the container
 * holds exactly what the direct command would read on the device.
 */
import { mkdir, readFile, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { DEFAULT_FLAKES_CONFIG_PATH, FLAKES_CONFIG_DEFAULTS } from "../../core/flakes/flake-config.ts";
import { parseFlakesConfig, renderContainerFlake } from "../../core/flakes/flake-yaml.ts";
import {
  FLEET_CREDENTIALS,
  FLEET_NAME,
  FLEET_SOURCE_DIR,
  fleetFlake,
  fleetLayerTar,
  presentCredentials,
  type FleetFile,
} from "../../core/image/fleet.ts";

/** The credentials the tree has under /usr/share/eos/fleet/, with their modes. */
export async function treeCredentials(tree: string): Promise<FleetFile[]> {
  const files: FleetFile[] = [];
  for (const c of FLEET_CREDENTIALS) {
    const path = join(tree, FLEET_SOURCE_DIR, c.file);
    const st = await stat(path).catch(() => undefined);
    if (st?.isFile()) files.push({ file: c.file, mode: st.mode & 0o777, content: await readFile(path) });
  }
  return files;
}

/** Writes the fleet layer's tar into `work`; undefined when the tree has no credentials. */
export async function fleetLayer(
  tree: string,
  work: string,
  sourceDateEpoch: number,
): Promise<{ tar: string; files: FleetFile[] } | undefined> {
  const files = await treeCredentials(tree);
  if (files.length === 0) return undefined;
  const tar = join(work, "fleet-layer.tar");
  await writeFile(tar, fleetLayerTar(files, sourceDateEpoch));
  return { tar, files };
}

/**
 * Registers the fleet flake in the tree as flake-ctl would on the device:
 * NAME.yaml in the flakes_dir of the tree's /etc/flakes.yml. The host
 * command stays /usr/bin/fleet (it chooses between the flake and the
 * direct copy at run time), so no link to podman-pilot is made.
 */
export async function writeFleetFlake(tree: string, files: readonly FleetFile[]): Promise<string> {
  const confPath = join(tree, DEFAULT_FLAKES_CONFIG_PATH);
  const text = await readFile(confPath, "utf8").catch(() => undefined);
  const flakesDir =
    text === undefined ? FLAKES_CONFIG_DEFAULTS.flakesDir : parseFlakesConfig(text, confPath).flakesDir;
  const file = join(flakesDir, `${FLEET_NAME}.yaml`);
  const path = join(tree, file);
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, renderContainerFlake(fleetFlake(presentCredentials(files))), { mode: 0o644 });
  return file;
}
