/**
 * Delta containers, layers, includes and host dependencies: the pilot runs a
 * *provisioned image* built from the base, the layers and the app image with
 * `podman build` (FROM + COPY --from + ADD/COPY only: nothing from any image
 * is executed, on the host or elsewhere). It is built once and reused while
 * its inputs stay the same.
 *
 * Reuse is checked without starting podman: the record of the last build
 * holds a stamp of the storage's image index (`<graphroot>/<driver>-images/
 * images.json`, rewritten by containers/storage whenever an image is added,
 * removed or re-tagged) and of the included host files. Only when a stamp
 * differs are the image IDs asked from podman and the key recomputed.
 */
import { cp, copyFile, mkdtemp, readFile, readdir, lstat, rm, writeFile, mkdir } from "node:fs/promises";
import { readFileSync, readdirSync, statSync } from "node:fs";
import { createHash } from "node:crypto";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import type { Writable } from "node:stream";
import { EosError } from "../../core/errors.ts";
import {
  parseHostDependencies,
  provisionContainerfile,
  provisionKeyMaterial,
  PROVISION_KEY_FILE,
  provisionedImageName,
  type ContainerFlake,
  type ProvisionPlan,
} from "../../core/flakes/container.ts";
import { writeFileAtomic } from "./flake-files.ts";
import type { Podman } from "./podman.ts";

interface ProvisionRecord {
  image: string;
  key: string;
  index: string;
  watched: string[];
  watchedStamp: string;
}

/** The plain `key = "value"` and `key = ["a", "b"]` lines of storage.conf (TOML), by section. */
function parseStorageConf(text: string): Map<string, string | string[]> {
  const values = new Map<string, string | string[]>();
  let section = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    const header = /^\[([^\]]+)\]$/.exec(line);
    if (header) {
      section = header[1]?.trim() ?? "";
      continue;
    }
    const scalar = /^([a-z_]+)\s*=\s*["']([^"']*)["']/.exec(line);
    if (scalar) {
      values.set(`${section}.${scalar[1]}`, scalar[2] ?? "");
      continue;
    }
    const list = /^([a-z_]+)\s*=\s*\[(.*)\]/.exec(line);
    if (list)
      values.set(
        `${section}.${list[1]}`,
        [...(list[2] ?? "").matchAll(/["']([^"']*)["']/g)].map((m) => m[1] ?? ""),
      );
  }
  return values;
}

/**
 * Stamp of podman's image indexes, or undefined when they cannot be located
 * (then podman is asked). The read-only stores (additionalimagestores, the
 * image's own store) change with an OS update; their records are dated at the
 * build's epoch and may keep their size, so they are stamped by content.
 */
export function imageIndexStamp(env: NodeJS.ProcessEnv): string | undefined {
  if (process.getuid?.() !== 0) return undefined; // rootless storage: not worth guessing
  const confs = env.CONTAINERS_STORAGE_CONF
    ? [env.CONTAINERS_STORAGE_CONF]
    : ["/etc/containers/storage.conf", "/usr/share/containers/storage.conf"];
  let graphroot = "/var/lib/containers/storage";
  let driver: string | undefined;
  let readOnlyStores: string[] = [];
  for (const conf of confs) {
    let text: string;
    try {
      text = readFileSync(conf, "utf8");
    } catch {
      continue;
    }
    const values = parseStorageConf(text);
    const root = values.get("storage.graphroot");
    if (typeof root === "string") graphroot = root;
    const d = values.get("storage.driver");
    driver = typeof d === "string" && d ? d : undefined;
    const stores = values.get("storage.options.additionalimagestores");
    if (Array.isArray(stores)) readOnlyStores = stores;
    break;
  }
  for (const d of driver ? [driver] : ["overlay", "vfs", "btrfs", "zfs"]) {
    const path = join(graphroot, `${d}-images`, "images.json");
    const st = statSync(path, { throwIfNoEntry: false });
    if (!st) continue;
    const parts = [`${path}:${st.mtimeMs}:${st.size}:${st.ino}`];
    for (const store of readOnlyStores) {
      const index = join(store, `${d}-images`, "images.json");
      let digest = "missing";
      try {
        digest = createHash("sha256").update(readFileSync(index)).digest("hex");
      } catch {
        // A store that is not there (yet) is part of the stamp too.
      }
      parts.push(`${index}:${digest}`);
    }
    return parts.join("\n");
  }
  return undefined;
}

/** Stamp of host files (recursively for directories): size, mtime and inode of each entry. */
export function filesStamp(paths: string[]): string {
  const parts: string[] = [];
  const walk = (path: string) => {
    let st;
    try {
      st = statSync(path, { throwIfNoEntry: false });
    } catch {
      st = undefined;
    }
    if (!st) {
      parts.push(`${path}:missing`);
      return;
    }
    parts.push(`${path}:${st.mode}:${st.size}:${st.mtimeMs}:${st.ino}`);
    if (st.isDirectory()) {
      let names: string[] = [];
      try {
        names = readdirSync(path).sort();
      } catch {
        names = [];
      }
      for (const name of names) walk(join(path, name));
    }
  };
  for (const p of paths) walk(p);
  return parts.join("\n");
}

export interface ProvisionOptions {
  recordPath: string;
  /** Show podman build's output on `log` (`%progress`). */
  progress: boolean;
  /** `%ignore_sync_error`: a missing include or host dependency is a warning, not an error. */
  ignoreSyncError: boolean;
  log: Writable;
  label: string;
}

function readRecord(path: string): ProvisionRecord | undefined {
  try {
    const data = JSON.parse(readFileSync(path, "utf8")) as ProvisionRecord;
    return typeof data.image === "string" && typeof data.index === "string" ? data : undefined;
  } catch {
    return undefined;
  }
}

/** The image to run for a flake that needs provisioning; builds it if its inputs changed. */
export async function ensureProvisionedImage(
  podman: Podman,
  flake: ContainerFlake,
  flakeName: string,
  opts: ProvisionOptions,
): Promise<string> {
  const record = readRecord(opts.recordPath);
  const index = imageIndexStamp(podman.env);
  if (
    record &&
    index !== undefined &&
    record.index === index &&
    filesStamp(record.watched) === record.watchedStamp
  ) {
    return record.image; // fast path: no podman call
  }

  const sources = flake.baseContainer ? [flake.baseContainer, ...flake.layers, flake.name] : [flake.name];
  const ids = await podman.imageIds(sources);
  const [baseId, ...rest] = ids;
  const copyFrom = flake.baseContainer ? rest : [];

  // Host dependencies: `removed` lists in the app image and its layers, read
  // from a read-only image mount (flake-pilot ran a script from the image).
  let hostDeps: string[] = [];
  if (flake.checkHostDependencies) {
    for (const id of flake.baseContainer ? copyFrom : [baseId ?? ""]) {
      const listed = await podman.withImageMount(id, async (dir) => {
        const text = await readFile(join(dir, "removed"), "utf8").catch(() => "");
        return parseHostDependencies(text);
      });
      hostDeps.push(...listed);
    }
    hostDeps = [...new Set(hostDeps)];
  }

  const includes = [...flake.include.tar, ...flake.include.path];
  const watched = [...includes, ...hostDeps];
  const watchedStamp = filesStamp(watched);
  for (const line of watchedStamp.split("\n")) {
    if (!line.endsWith(":missing")) continue;
    const path = line.slice(0, -":missing".length);
    const message = `${opts.label}: include or host dependency ${path} does not exist`;
    if (!opts.ignoreSyncError)
      throw new EosError("FLAKE", message, { hint: "or call with %ignore_sync_error" });
    opts.log.write(`${message} (ignored: %ignore_sync_error)\n`);
  }
  const material = provisionKeyMaterial({
    base: baseId ?? "",
    layers: flake.baseContainer ? copyFrom.slice(0, -1) : [],
    app: flake.baseContainer ? copyFrom[copyFrom.length - 1] : undefined,
    includes: [
      ...flake.include.tar.map((t) => `tar:${t}`),
      ...flake.include.path.map((t) => `path:${t}`),
      watchedStamp,
    ],
    hostDeps,
  });
  const key = createHash("sha256").update(material).digest("hex").slice(0, 20);
  const image = provisionedImageName(flakeName, key);

  const stale = record && record.image !== image ? record.image : undefined;
  if (stale) {
    // The previous build is stale; drop it unless an instance still uses it. Before
    // the new build: after an OS update its base layer (in the image's read-only
    // store) is gone, and podman, finding the same app layer in it, would reuse it.
    await podman.output(["image", "rm", stale], { allowFailure: true });
  }
  if (!(await podman.imageExists(image))) {
    await buildImage(
      podman,
      flakeName,
      image,
      {
        from: baseId ?? "",
        copyFrom,
        tars: [],
        paths: false,
        hostDeps: false,
        key,
      },
      flake,
      hostDeps,
      opts,
    );
  }
  const newIndex = imageIndexStamp(podman.env) ?? "";
  const next: ProvisionRecord = { image, key, index: newIndex, watched, watchedStamp };
  await mkdir(dirname(opts.recordPath), { recursive: true });
  await writeFileAtomic(opts.recordPath, `${JSON.stringify(next)}\n`);
  return image;
}

async function copyInto(src: string, destRoot: string, ignoreMissing: boolean, log: Writable): Promise<void> {
  const st = await lstat(src).catch(() => undefined);
  if (!st) {
    if (ignoreMissing) return;
    throw new EosError("FLAKE", `${src} does not exist`);
  }
  const dest = join(destRoot, src);
  await mkdir(dirname(dest), { recursive: true });
  await cp(src, dest, { recursive: true, preserveTimestamps: true, verbatimSymlinks: true }).catch(
    (error: unknown) => {
      if (!ignoreMissing) throw error;
      log.write(`cannot copy ${src}: ${(error as Error).message}\n`);
    },
  );
}

async function buildImage(
  podman: Podman,
  flakeName: string,
  image: string,
  plan: ProvisionPlan,
  flake: ContainerFlake,
  hostDeps: string[],
  opts: ProvisionOptions,
): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "eos-flake-build-"));
  try {
    if (hostDeps.length > 0) {
      await mkdir(join(dir, "host"), { recursive: true });
      for (const dep of hostDeps) await copyInto(dep, join(dir, "host"), true, opts.log);
      plan.hostDeps = (await readdir(join(dir, "host"))).length > 0;
    }
    let n = 0;
    for (const tar of flake.include.tar) {
      const exists = await lstat(tar).catch(() => undefined);
      if (!exists) continue; // reported (or refused) before
      const name = `include-${n++}.tar`;
      await copyFile(tar, join(dir, name));
      plan.tars.push(name);
    }
    if (flake.include.path.length > 0) {
      await mkdir(join(dir, "paths"), { recursive: true });
      for (const path of flake.include.path)
        await copyInto(path, join(dir, "paths"), opts.ignoreSyncError, opts.log);
      plan.paths = (await readdir(join(dir, "paths"))).length > 0;
    }
    await writeFile(join(dir, PROVISION_KEY_FILE), `${plan.key}\n`);
    await writeFile(join(dir, "Containerfile"), provisionContainerfile(plan, flakeName));
    if (opts.progress) opts.log.write(`${opts.label}: provisioning ${image}\n`);
    const args = [
      "build",
      "--layers=false",
      "--pull=never",
      "--network=none",
      "-f",
      join(dir, "Containerfile"),
      "-t",
      image,
      dir,
    ];
    if (opts.progress) {
      const code = await podman.launch(args, { stdio: ["ignore", 2, 2] });
      if (code !== 0)
        throw new EosError("PODMAN", `${opts.label}: building ${image} failed (podman build exit ${code})`);
    } else {
      await podman.output(["build", "-q", ...args.slice(1)]);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
