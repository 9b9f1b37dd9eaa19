/**
 * The seed's `fleet`: a container named `fleet` in the image's read-only
 * store holds the device's update credentials, and a flake of the same name
 * runs it (`fleet --getkey`). Built by eos build as one small layer on the
 * description's base container (so the store holds the base once), from the
 * same files the direct command reads (/usr/share/eos/fleet/ in the root,
 * from the description's `files:`). The root keeps those files too: they are
 * the direct command's source when podman cannot run.
 */
import type { ContainerFlake } from "../flakes/container.ts";
import { containerReference } from "./containers.ts";
import { tarArchive, type TarEntry } from "../tar.ts";

/** Where the image keeps the credentials, in the root and in the container. */
export const FLEET_SOURCE_DIR = "/usr/share/eos/fleet";

/** Each credential: its file in FLEET_SOURCE_DIR, where --getkey puts it (mode 0600), what it is. */
export const FLEET_CREDENTIALS = [
  { file: "id_fleet", target: "/run/id_fleet", what: "SSH key" },
  { file: "token", target: "/run/eos/fleet-token", what: "update token" },
] as const;

export type FleetCredential = (typeof FLEET_CREDENTIALS)[number];

/** The container, the flake and the host command share the seed's name. */
export const FLEET_NAME = "fleet";
export const FLEET_HOST_APP = "/usr/bin/fleet";
/**
 * The image's own flakes: a read-only directory in the root and the
 * flakes.yml that names it (the image's flakes_dir is in the registry).
 */
export const FLEET_FLAKES_DIR = "/usr/share/eos/flakes";
export const FLEET_FLAKES_CONFIG = "/usr/share/eos/flakes.yml";
/** The app inside the container. */
export const FLEET_CONTAINER_APP = "/usr/lib/eos/fleet-getkey";

export interface FleetFile {
  file: string;
  mode: number;
  content: Buffer;
}

/** Credentials of FLEET_CREDENTIALS the image has, in its order. */
export function presentCredentials(files: readonly FleetFile[]): FleetCredential[] {
  return FLEET_CREDENTIALS.filter((c) => files.some((f) => f.file === c.file));
}

/**
 * The container's app (POSIX sh; the base is a Debian minbase). The host
 * makes each target file (mode 0600) and the flake mounts just those files;
 * writing through the mount keeps the host's mode. A target that is not
 * mounted would be written inside the container and lost: that is an error.
 */
export function fleetGetkeyScript(credentials: readonly FleetCredential[]): string {
  const copies = credentials.map(
    (c) =>
      `copy ${c.file} ${c.target} ${JSON.stringify(c.what)} ${JSON.stringify(JSON.stringify({ what: c.what, path: c.target }))}`,
  );
  return `#!/bin/sh
# EOS: the fleet container's app: fleet --getkey [--json] copies the device's
# update credentials into the host files the flake mounts at their targets.
set -eu
json=0
getkey=0
for arg in "$@"; do
  case "$arg" in
  --getkey) getkey=1 ;;
  --json) json=1 ;;
  *) echo "fleet: $arg: the fleet container takes --getkey [--json]" >&2; exit 2 ;;
  esac
done
if [ "$getkey" != 1 ]; then echo "fleet: nothing to do: pass --getkey" >&2; exit 2; fi
src=${FLEET_SOURCE_DIR}
installed=""
copy() {
  [ -f "$src/$1" ] || return 0
  if [ ! -f "$2" ]; then
    echo "fleet: $2 is not mounted from the host (the host makes it before the container runs)" >&2
    exit 1
  fi
  cat "$src/$1" >"$2"
  if [ "$json" = 1 ]; then installed="\${installed:+$installed,}$4"; else echo "$3 installed at $2"; fi
}
${copies.join("\n")}
if [ "$json" = 1 ]; then echo "[$installed]"; fi
`;
}

/**
 * The container's one layer over its base: the credentials (modes as the
 * root has them) and the app. Parent directories are written as Debian has
 * them (0755), so the layer never changes the base's.
 */
export function fleetLayerTar(files: readonly FleetFile[], sourceDateEpoch: number): Buffer {
  const dirs = ["usr", "usr/lib", "usr/lib/eos", "usr/share", "usr/share/eos", FLEET_SOURCE_DIR.slice(1)];
  const entries: TarEntry[] = dirs.map((path) => ({ path, type: "dir", mode: 0o755 }));
  for (const c of FLEET_CREDENTIALS) {
    const f = files.find((x) => x.file === c.file);
    if (f)
      entries.push({
        path: `${FLEET_SOURCE_DIR.slice(1)}/${c.file}`,
        type: "file",
        mode: f.mode & 0o777,
        content: f.content,
      });
  }
  entries.push({
    path: FLEET_CONTAINER_APP.slice(1),
    type: "file",
    mode: 0o755,
    content: Buffer.from(fleetGetkeyScript(presentCredentials(files))),
  });
  return tarArchive(entries, sourceDateEpoch);
}

/**
 * What the container sees of the host: the target file of each credential
 * the image has, nothing else (no network, no capabilities, its own root
 * read-only). The seed mounted all of /run.
 */
export function fleetPodmanOptions(credentials: readonly FleetCredential[]): string[] {
  return [
    "--network none",
    "--cap-drop all",
    "--security-opt no-new-privileges",
    "--read-only",
    ...credentials.map((c) => `--volume ${c.target}:${c.target}:rw`),
  ];
}

/** The `fleet` flake as `flake-ctl podman register` would write it. */
export function fleetFlake(credentials: readonly FleetCredential[]): ContainerFlake {
  return {
    name: containerReference(FLEET_NAME),
    targetAppPath: FLEET_CONTAINER_APP,
    hostAppPath: FLEET_HOST_APP,
    baseContainer: undefined,
    layers: [],
    checkHostDependencies: false,
    runtime: { runas: undefined, resume: false, attach: false, podman: fleetPodmanOptions(credentials) },
    include: { tar: [], path: [] },
  };
}
