/**
 * The image's read-only container store (the seed's split registry): images
 * listed under `containers:` in the description are put into a podman
 * storage inside the root, which the device's storage.conf names as an
 * additional image store. Flakes use them as bases (`--base basesystem`)
 * without a pull; what flakes provision lands in the writable registry.
 *
 * A container from Debian packages becomes an OCI image written here, byte
 * for byte the same for the same inputs (its layer is mmdebstrap's
 * reproducible tar, its config dated at SOURCE_DATE_EPOCH), so its image ID
 * and the root slot stay reproducible.
 */
import { createHash } from "node:crypto";
import { EosError } from "../errors.ts";
import { ARCH_PROFILES, type Architecture } from "./arch.ts";

/** dpkg path filters of every root EOS builds (image and containers): no docs, manuals or translations. */
export const NO_DOCS_DPKG_OPTIONS = [
  "--dpkgopt=path-exclude=/usr/share/doc/*",
  "--dpkgopt=path-include=/usr/share/doc/*/copyright",
  "--dpkgopt=path-exclude=/usr/share/man/*",
  "--dpkgopt=path-exclude=/usr/share/info/*",
  "--dpkgopt=path-exclude=/usr/share/locale/*",
  "--dpkgopt=path-include=/usr/share/locale/locale.alias",
] as const;

/** Where the store lives in the root, and what storage.conf names as additionalimagestores. */
export const READ_ONLY_STORE = "/usr/share/containers/storage";

/** podman's graphroot on a device: the writable flake registry (p.spare) is mounted there. */
export const GRAPHROOT = "/var/lib/containers/storage";

/** The device's podman storage: the writable registry as graphroot, the image's store beside it. */
export function storageConf(graphroot: string = GRAPHROOT, readOnlyStore: string = READ_ONLY_STORE): string {
  return [
    "# EOS: the writable flake registry (p.spare) is podman's graphroot; the",
    `# images built into the OS (eos build, containers:) are read-only in ${READ_ONLY_STORE}.`,
    "[storage]",
    'driver = "overlay"',
    `graphroot = ${JSON.stringify(graphroot)}`,
    'runroot = "/run/containers/storage"',
    "",
    "[storage.options]",
    `additionalimagestores = [${JSON.stringify(readOnlyStore)}]`,
    "",
  ].join("\n");
}

/** The name podman gives the image: localhost/NAME:latest, found as NAME by flakes. */
export function containerReference(name: string): string {
  return `localhost/${name}:latest`;
}

/** OCI's names for the architectures EOS builds. */
const OCI_ARCH: Record<Architecture, string> = { x86_64: "amd64", aarch64: "arm64" };

export interface OciLayer {
  sha256: string;
  size: number;
}

export interface OciImageFiles {
  /** blobs/sha256/<hex> → content, plus index.json and oci-layout. */
  blobs: Map<string, string>;
  index: string;
  layout: string;
}

function digestOf(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/**
 * An OCI image layout around uncompressed layers (one from mmdebstrap, or a
 * base's and one more on it): the same layers, epoch and command always give
 * the same config and so the same image ID.
 */
export function ociImageFiles(
  layer: OciLayer | OciLayer[],
  architecture: Architecture,
  sourceDateEpoch: number,
  cmd: string[],
  /** What made each layer, in order (the image's history). */
  createdBy: string[] = ["eos build (mmdebstrap)"],
): OciImageFiles {
  const layers = Array.isArray(layer) ? layer : [layer];
  if (createdBy.length !== layers.length)
    throw new EosError("BUILD", `an OCI image of ${layers.length} layers needs as many history entries`);
  const created = new Date(sourceDateEpoch * 1000).toISOString();
  const config = JSON.stringify({
    created,
    architecture: OCI_ARCH[architecture],
    os: "linux",
    config: {
      Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
      Cmd: cmd,
    },
    rootfs: { type: "layers", diff_ids: layers.map((l) => `sha256:${l.sha256}`) },
    history: createdBy.map((by) => ({ created, created_by: by })),
  });
  const configDigest = digestOf(config);
  const manifest = JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: {
      mediaType: "application/vnd.oci.image.config.v1+json",
      digest: `sha256:${configDigest}`,
      size: Buffer.byteLength(config),
    },
    layers: layers.map((l) => ({
      mediaType: "application/vnd.oci.image.layer.v1.tar",
      digest: `sha256:${l.sha256}`,
      size: l.size,
    })),
  });
  const manifestDigest = digestOf(manifest);
  const index = JSON.stringify({
    schemaVersion: 2,
    manifests: [
      {
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        digest: `sha256:${manifestDigest}`,
        size: Buffer.byteLength(manifest),
      },
    ],
  });
  return {
    blobs: new Map([
      [configDigest, config],
      [manifestDigest, manifest],
    ]),
    index,
    layout: JSON.stringify({ imageLayoutVersion: "1.0.0" }),
  };
}

export interface ContainerRootInputs {
  name: string;
  suite: string;
  mirror: string;
  components: string[];
  architecture: Architecture;
  packages: string[];
  sourceDateEpoch: number;
  /** sha256 of the archive's index files: a new archive state makes a new root. */
  archive: Record<string, string>;
}

/** The cache key of a container's root tar: mmdebstrap's arguments, the epoch and the archive's state. */
export function containerRootKey(inputs: ContainerRootInputs): string {
  return createHash("sha256")
    .update(
      JSON.stringify({
        kind: "container-root",
        argv: containerMmdebstrapArgv(inputs, "OUT"),
        epoch: inputs.sourceDateEpoch,
        archive: inputs.archive,
      }),
    )
    .digest("hex");
}

/** mmdebstrap writing a container's root as a reproducible tar (minbase, no docs). */
export function containerMmdebstrapArgv(inputs: ContainerRootInputs, out: string): string[] {
  const foreign = inputs.architecture !== "x86_64";
  return [
    "mmdebstrap",
    "--mode=root",
    "--variant=minbase",
    "--format=tar",
    // /usr merged by mmdebstrap's hook, not by the usrmerge package, which would pull in perl (47 MB).
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    ...(foreign ? [`--architectures=${ARCH_PROFILES[inputs.architecture].debian}`] : []),
    `--components=${inputs.components.join(",")}`,
    ...(inputs.packages.length > 0 ? [`--include=${[...inputs.packages].sort().join(",")}`] : []),
    '--aptopt=APT::Install-Recommends "false"',
    ...NO_DOCS_DPKG_OPTIONS,
    inputs.suite,
    out,
    inputs.mirror,
  ];
}

/**
 * containers/storage names each overlay layer's short link at random; the
 * build renames it after the layer's ID so that two builds write one store.
 */
export function stableLinkName(layerId: string): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  const digest = createHash("sha256").update(layerId).digest();
  let out = "";
  for (let i = 0; out.length < 26; i++) out += alphabet[(digest[i] as number) % 32];
  return out;
}
