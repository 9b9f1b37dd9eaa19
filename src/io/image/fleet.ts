/**
 * The fleet container's inputs from the root tree and its flake file in it
 * (src/core/image/fleet.ts says what they are). The credentials come from
 * the tree after the description's files: were copied, so the container
 * holds exactly what the direct command would read on the device.
 */
import { mkdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { DEFAULT_FLAKES_CONFIG_PATH, FLAKES_CONFIG_DEFAULTS } from "../../core/flakes/flake-config.ts";
import { parseFlakesConfig, renderContainerFlake, renderYaml } from "../../core/flakes/flake-yaml.ts";
import {
  FLEET_CREDENTIALS,
  FLEET_FLAKES_CONFIG,
  FLEET_FLAKES_DIR,
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
 * Registers the fleet flake in the tree as flake-ctl would (NAME.yaml, the
 * same document), but in a flakes directory of the read-only root,
 * FLEET_FLAKES_DIR, named by a flakes.yml of its own (FLEET_FLAKES_CONFIG):
 * the image's flakes_dir is a link into the writable registry, which does
 * not exist at build time and may not on the device. The rest of that
 * flakes.yml is the image's (/etc/flakes.yml). The host command stays
 * /usr/bin/fleet (it chooses between the flake and the direct copy at run
 * time), so no link to podman-pilot is made.
 */
export async function writeFleetFlake(tree: string, files: readonly FleetFile[]): Promise<string> {
  const confPath = join(tree, DEFAULT_FLAKES_CONFIG_PATH);
  const text = await readFile(confPath, "utf8").catch(() => undefined);
  const image = text === undefined ? FLAKES_CONFIG_DEFAULTS : parseFlakesConfig(text, confPath);
  const file = join(FLEET_FLAKES_DIR, `${FLEET_NAME}.yaml`);
  await mkdir(join(tree, FLEET_FLAKES_DIR), { recursive: true });
  await writeFile(join(tree, file), renderContainerFlake(fleetFlake(presentCredentials(files))), {
    mode: 0o644,
  });
  await writeFile(
    join(tree, FLEET_FLAKES_CONFIG),
    `# EOS: the flakes built into the image (eos build), read-only; fleet --getkey names this file.\n${renderYaml(
      {
        generic: {
          flakes_dir: FLEET_FLAKES_DIR,
          podman_ids_dir: image.podmanIdsDir,
          podman_storage_conf: image.podmanStorageConf,
        },
      },
    )}`,
    { mode: 0o644 },
  );
  return file;
}
