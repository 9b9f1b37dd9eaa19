/**
 * The read-only container store in the root (src/core/image/containers.ts
 * says why): each container's root comes from mmdebstrap (kept in a cache
 * beside the root cache, keyed by its inputs and the archive's state) or
 * from an OCI archive file, and goes into the store with the build host's
 * podman, which is the device's (both are bookworm's). The store is then
 * made the same for the same inputs: containers/storage's random link names
 * and clock times are replaced by ones derived from the content.
 */
import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import {
  link,
  symlink,
  copyFile,
  mkdir,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  utimes,
  writeFile,
} from "node:fs/promises";
import { isAbsolute, join, resolve } from "node:path";
import { pipeline } from "node:stream/promises";
import { EosError } from "../../core/errors.ts";
import type { Architecture } from "../../core/image/arch.ts";
import {
  READ_ONLY_STORE,
  containerMmdebstrapArgv,
  containerReference,
  containerRootKey,
  ociImageFiles,
  stableLinkName,
  type ContainerRootInputs,
} from "../../core/image/containers.ts";
import type { ImageDescription } from "../../core/image/description.ts";
import { archiveIndexPaths } from "../../core/image/root-cache.ts";
import type { ProcessRunner } from "../process.ts";
import { defaultFetchIndex } from "./base-root.ts";
import { fleetLayer, writeFleetFlake } from "./fleet.ts";
import { FLEET_CONTAINER_APP, FLEET_NAME, FLEET_SOURCE_DIR } from "../../core/image/fleet.ts";

export interface ContainerStoreOptions {
  desc: ImageDescription;
  /** The description's directory: archive paths are relative to it. */
  base: string;
  architecture: Architecture;
  tree: string;
  /** Scratch space of this build. */
  work: string;
  sourceDateEpoch: number;
  /** Where built container roots are kept; undefined builds without the cache (--no-cache). */
  cacheDir: string | undefined;
  env: NodeJS.ProcessEnv;
  log: (line: string) => void;
  proc: ProcessRunner;
  signal?: AbortSignal;
  fetchIndex?: (url: string) => Promise<Buffer>;
}

/** Container roots kept: enough for a few descriptions, bounded on a build host's disk. */
const CACHE_KEEP = 6;

async function sha256File(path: string): Promise<{ sha256: string; size: number }> {
  const hash = createHash("sha256");
  await pipeline(createReadStream(path), hash);
  return { sha256: hash.digest("hex"), size: (await stat(path)).size };
}

async function containerRootTar(o: ContainerStoreOptions, name: string, packages: string[]): Promise<string> {
  const { desc } = o;
  const fetchIndex = o.fetchIndex ?? defaultFetchIndex;
  const mirror = desc.distribution.mirror.replace(/\/+$/, "");
  const archive: Record<string, string> = {};
  if (o.cacheDir)
    for (const path of archiveIndexPaths(desc.distribution.suite))
      archive[path] = createHash("sha256")
        .update(await fetchIndex(`${mirror}/${path}`))
        .digest("hex");
  const inputs: ContainerRootInputs = {
    name,
    suite: desc.distribution.suite,
    mirror: desc.distribution.mirror,
    components: desc.distribution.components,
    architecture: o.architecture,
    packages,
    sourceDateEpoch: o.sourceDateEpoch,
    archive,
  };
  const key = containerRootKey(inputs);
  const what = `mmdebstrap minbase${packages.length > 0 ? ` + ${packages.join(", ")}` : ""}`;
  if (o.cacheDir) {
    const cached = join(o.cacheDir, `${key.slice(0, 32)}.tar`);
    if (await stat(cached).catch(() => undefined)) {
      o.log(`container ${name}: cache hit, ${cached}`);
      return cached;
    }
    await mkdir(o.cacheDir, { recursive: true });
    const partial = `${cached}.partial-${process.pid}`;
    o.log(`container ${name}: cache miss (key ${key.slice(0, 16)}…): ${what}`);
    try {
      await runMmdebstrap(o, inputs, partial);
      await rename(partial, cached);
    } finally {
      await rm(partial, { force: true });
    }
    await pruneCache(o.cacheDir);
    return cached;
  }
  const out = join(o.work, `container-${name}.tar`);
  o.log(`container ${name}: ${what}, without the cache (--no-cache)`);
  await runMmdebstrap(o, inputs, out);
  return out;
}

async function runMmdebstrap(o: ContainerStoreOptions, inputs: ContainerRootInputs, out: string) {
  await o.proc.run(containerMmdebstrapArgv(inputs, out), {
    code: "BUILD",
    env: o.env,
    capture: false,
    onLine: (l) => {
      if (/^(W|E): /.test(l)) o.log(`mmdebstrap (${inputs.name}): ${l}`);
    },
    ...(o.signal ? { signal: o.signal } : {}),
  });
}

async function pruneCache(dir: string): Promise<void> {
  const entries = [];
  for (const n of await readdir(dir)) {
    if (!n.endsWith(".tar")) continue;
    const st = await stat(join(dir, n)).catch(() => undefined);
    if (st) entries.push({ n, t: st.mtimeMs });
  }
  entries.sort((a, b) => b.t - a.t);
  for (const e of entries.slice(CACHE_KEEP)) await rm(join(dir, e.n), { force: true });
}

/** The OCI layout podman pulls from: the tars as its layers, a config dated at the epoch. */
async function ociLayout(
  o: ContainerStoreOptions,
  name: string,
  tars: string[],
  cmd: string[],
  createdBy?: string[],
): Promise<string> {
  const dir = join(o.work, `oci-${name}`);
  await rm(dir, { recursive: true, force: true });
  const blobs = join(dir, "blobs", "sha256");
  await mkdir(blobs, { recursive: true });
  const layers = [];
  for (const tar of tars) {
    const layer = await sha256File(tar);
    await link(tar, join(blobs, layer.sha256)).catch(() => copyFile(tar, join(blobs, layer.sha256)));
    layers.push(layer);
  }
  const files = ociImageFiles(layers, o.architecture, o.sourceDateEpoch, cmd, createdBy);
  for (const [digest, content] of files.blobs) await writeFile(join(blobs, digest), content);
  await writeFile(join(dir, "index.json"), files.index);
  await writeFile(join(dir, "oci-layout"), files.layout);
  return dir;
}

/** Fills the root's read-only store with the description's containers; returns their image IDs. */
export async function buildContainerStore(o: ContainerStoreOptions): Promise<Map<string, string>> {
  const ids = new Map<string, string>();
  if (o.desc.containers.length === 0) return ids;
  const store = join(o.tree, READ_ONLY_STORE);
  const runroot = join(o.work, "containers-run");
  const conf = join(o.work, "containers-storage.conf");
  for (const path of [store, runroot, o.work])
    if (path.includes(":"))
      // podman's transports (oci:PATH) and storage.conf cannot carry a colon in a path.
      throw new EosError("BUILD", `the build's work directory ${o.work} contains ':'`, {
        hint: "build with --out in a directory without ':'",
      });
  await mkdir(store, { recursive: true });
  await mkdir(runroot, { recursive: true });
  await writeFile(
    conf,
    `[storage]\ndriver = "overlay"\ngraphroot = ${JSON.stringify(store)}\nrunroot = ${JSON.stringify(runroot)}\n`,
  );
  const env = { ...o.env, CONTAINERS_STORAGE_CONF: conf };
  const podman = async (args: string[]) =>
    (
      await o.proc.run(["podman", "--events-backend=none", "--cgroup-manager=cgroupfs", ...args], {
        code: "BUILD",
        env,
        ...(o.signal ? { signal: o.signal } : {}),
      })
    ).stdout.trim();
  const linkDirs: string[] = [];
  // podman names an image pulled from an OCI directory after its path, and refuses
  // a path that is not a valid reference (upper case): it reads the layout through
  // a link at a lower-case path, and the name is replaced in normalizeStore.
  const ociSource = async (name: string, layout: string) => {
    const linkDir = `/tmp/eos-oci-${randomBytes(8).toString("hex")}`;
    await mkdir(linkDir, { mode: 0o700 });
    linkDirs.push(linkDir);
    await symlink(layout, join(linkDir, name));
    return `oci:${join(linkDir, name)}`;
  };
  const pull = async (name: string, source: string) => {
    const id = (await podman(["pull", "--quiet", source])).split("\n").pop() ?? "";
    if (!/^[0-9a-f]{64}$/.test(id))
      throw new EosError("BUILD", `container ${name}: podman pull ${source} gave no image ID`);
    await podman(["tag", id, containerReference(name)]);
    ids.set(name, id);
    o.log(`container ${name}: ${containerReference(name)} ${id.slice(0, 12)} in ${READ_ONLY_STORE}`);
  };
  const tars = new Map<string, string>();
  try {
    for (const c of o.desc.containers) {
      let source: string;
      if (c.archive !== undefined) {
        const file = isAbsolute(c.archive) ? c.archive : resolve(o.base, c.archive);
        if (!(await stat(file).catch(() => undefined))?.isFile())
          throw new EosError("CONFIG", `containers: ${c.name}: archive ${file} does not exist`, {
            hint: "an OCI archive, e.g. from podman save --format oci-archive -o FILE IMAGE",
          });
        if (file.includes(":"))
          throw new EosError("CONFIG", `containers: ${c.name}: archive path ${file} contains ':'`);
        source = `oci-archive:${file}`;
        o.log(`container ${c.name}: from ${file}`);
      } else {
        const tar = await containerRootTar(o, c.name, c.packages ?? []);
        tars.set(c.name, tar);
        source = await ociSource(c.name, await ociLayout(o, c.name, [tar], c.cmd));
      }
      await pull(c.name, source);
    }
    const base = o.desc.fleet && tars.get(o.desc.fleet.base);
    if (base) {
      // One small layer on the base's: the store keeps the base's layer once.
      const fleet = await fleetLayer(o.tree, o.work, o.sourceDateEpoch);
      if (!fleet)
        o.log(
          `container ${FLEET_NAME}: no credentials under ${FLEET_SOURCE_DIR} in the root (files:): none built; fleet --getkey copies directly`,
        );
      else {
        const layout = await ociLayout(
          o,
          FLEET_NAME,
          [base, fleet.tar],
          [FLEET_CONTAINER_APP],
          [
            "eos build (mmdebstrap)",
            `eos build (${fleet.files.map((f) => f.file).join(", ")} from ${FLEET_SOURCE_DIR})`,
          ],
        );
        await pull(FLEET_NAME, await ociSource(FLEET_NAME, layout));
        o.log(`flake ${FLEET_NAME}: ${await writeFleetFlake(o.tree, fleet.files)}`);
      }
    }
  } finally {
    for (const dir of linkDirs) await rm(dir, { recursive: true, force: true });
    await o.proc
      .run(["umount", "--recursive", "--quiet", join(store, "overlay")], { code: "BUILD" })
      .catch(() => undefined);
  }
  await normalizeStore(store, o.sourceDateEpoch, ids);
  return ids;
}

/** Timestamps containers/storage writes into its JSON records ("created", "loaded"…). */
function dateEverything(value: unknown, iso: string): unknown {
  if (Array.isArray(value)) return value.map((v) => dateEverything(v, iso));
  if (value && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      out[k] =
        typeof v === "string" && /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}/.test(v) && k !== "digest"
          ? iso
          : dateEverything(v, iso);
    }
    return out;
  }
  return value;
}

/**
 * Makes the store the same for the same images: what podman keeps about
 * itself (its database, locks' contents, scratch) goes, short link names
 * follow the layer IDs and recorded times become the epoch.
 */
async function normalizeStore(
  store: string,
  sourceDateEpoch: number,
  ids: Map<string, string>,
): Promise<void> {
  for (const scratch of ["libpod", "tmp", "mounts", "defaultNetworkBackend", "overlay-containers"])
    await rm(join(store, scratch), { recursive: true, force: true });
  const overlay = join(store, "overlay");
  const links = join(overlay, "l");
  const renames = new Map<string, string>();
  for (const layerId of await readdir(overlay)) {
    if (layerId === "l") continue;
    const linkFile = join(overlay, layerId, "link");
    const old = (await readFile(linkFile, "utf8").catch(() => "")).trim();
    if (!old) continue;
    const stable = stableLinkName(layerId);
    if (old !== stable) {
      await rename(join(links, old), join(links, stable));
      await writeFile(linkFile, stable);
      renames.set(old, stable);
    }
  }
  for (const layerId of await readdir(overlay)) {
    const lower = join(overlay, layerId, "lower");
    const text = await readFile(lower, "utf8").catch(() => undefined);
    if (text === undefined) continue;
    await writeFile(
      lower,
      text
        .split(":")
        .map((p) => (p.startsWith("l/") ? `l/${renames.get(p.slice(2)) ?? p.slice(2)}` : p))
        .join(":"),
    );
  }
  const iso = new Date(sourceDateEpoch * 1000).toISOString();
  // An image pulled from an OCI directory is also named after the directory (a build path).
  const names = new Map([...ids].map(([name, id]) => [id, [containerReference(name)]]));
  for (const record of ["overlay-images/images.json", "overlay-layers/layers.json"]) {
    const path = join(store, record);
    const text = await readFile(path, "utf8").catch(() => undefined);
    if (text === undefined) continue;
    const entries = dateEverything(JSON.parse(text), iso) as Record<string, unknown>[];
    for (const entry of entries) {
      const own = names.get(String(entry.id));
      if (record.startsWith("overlay-images") && own) {
        entry.names = own;
        entry["names-history"] = own;
      }
    }
    await writeFile(path, JSON.stringify(entries));
  }
  // Lock files hold a token of the last writer; a read-only store is never written.
  for (const lock of ["storage.lock", "overlay-images/images.lock", "overlay-layers/layers.lock"])
    if (await stat(join(store, lock)).catch(() => undefined)) await writeFile(join(store, lock), "");
  const when = new Date(sourceDateEpoch * 1000);
  await utimes(store, when, when);
}
