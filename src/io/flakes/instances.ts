/**
 * The running instances of flakes, for `flake-ctl podman show` and
 * `flake-ctl firecracker show` (flake-pilot showed its id files): a
 * container flake's `<podman_ids_dir>/<uid>/NAME[@INSTANCE].cid` with the
 * container's state from podman, a VM flake's instance record with whether
 * its VM process is alive.
 */
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { Context } from "../context.ts";
import { pidAlive } from "../process.ts";
import { type FlakesSetup } from "./flake-files.ts";
import { idsDirFor } from "./instance-files.ts";
import { flakePodman } from "./podman.ts";

export interface InstanceView {
  flake: string;
  instance: string | null;
  id: string;
  status: string;
  file: string;
}

function splitKey(key: string): { flake: string; instance: string | null } {
  const at = key.indexOf("@");
  return at < 0 ? { flake: key, instance: null } : { flake: key.slice(0, at), instance: key.slice(at + 1) };
}

/** Container instances with an id file; `status` is podman's (running, exited, …) or "gone". */
export async function listContainerInstances(ctx: Context, setup: FlakesSetup): Promise<InstanceView[]> {
  const dir = idsDirFor(setup.config.podmanIdsDir);
  const files = (await readdir(dir).catch(() => [] as string[])).filter((f) => f.endsWith(".cid")).sort();
  const podman = flakePodman(ctx, setup, "flake-ctl");
  const out: InstanceView[] = [];
  for (const f of files) {
    const file = join(dir, f);
    const id = (await readFile(file, "utf8").catch(() => "")).trim();
    const status = id ? ((await podman.containerState(id)) ?? "gone") : "empty id file";
    out.push({ ...splitKey(f.slice(0, -".cid".length)), id, status, file });
  }
  return out;
}

/** VM instances (resume VMs) with a record; `status` is running or stale (the VM process is gone). */
export async function listVmInstances(setup: FlakesSetup): Promise<InstanceView[]> {
  const base = join(idsDirFor(setup.config.firecrackerIdsDir), "vm");
  const out: InstanceView[] = [];
  for (const entry of (await readdir(base).catch(() => [] as string[])).sort()) {
    const file = join(base, entry, "instance.json");
    const text = await readFile(file, "utf8").catch(() => undefined);
    if (text === undefined) continue;
    let pid = 0;
    try {
      pid = Number((JSON.parse(text) as { pid?: unknown }).pid);
    } catch {
      pid = 0;
    }
    const status = Number.isInteger(pid) && pid > 0 && pidAlive(pid) ? "running" : "stale";
    out.push({ ...splitKey(entry), id: String(pid), status, file });
  }
  return out;
}
