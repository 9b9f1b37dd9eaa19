/**
 * What os-update does to the running machine: load a kernel for kexec,
 * jump into it, or reboot. Behind an interface so that the integration tier
 * records these calls while the VM tier runs them for real.
 */
import { lstat, mkdir, mkdtemp, readlink, rmdir } from "node:fs/promises";
import { isAbsolute, join, normalize, dirname } from "node:path";
import type { ByteRange } from "../../core/gpt.ts";
import { EosError } from "../../core/errors.ts";
import type { ProcessRunner } from "../process.ts";

export interface BootActions {
  kexecLoad(kernel: string, initrd: string | undefined, cmdline: string): Promise<void>;
  kexecExec(): Promise<void>;
  reboot(): Promise<void>;
}

async function runTool(proc: ProcessRunner, argv: string[], what: string): Promise<void> {
  await proc.run(argv, { what });
}

export function systemBootActions(proc: ProcessRunner): BootActions {
  return {
    kexecLoad: (kernel, initrd, cmdline) =>
      runTool(
        proc,
        ["kexec", "-l", kernel, ...(initrd ? [`--initrd=${initrd}`] : []), `--append=${cmdline}`],
        "kexec -l",
      ),
    // systemctl kexec stops services cleanly before jumping; plain kexec -e only where systemd is absent.
    kexecExec: () =>
      runTool(proc, ["systemctl", "kexec"], "systemctl kexec").catch(() =>
        runTool(proc, ["kexec", "-e"], "kexec -e"),
      ),
    reboot: () => runTool(proc, ["systemctl", "reboot"], "systemctl reboot"),
  };
}

/** Mounts a slot's file system read-only (loop over the disk at the slot's offset) for the duration of fn. */
export async function withSlotMounted<T>(
  proc: ProcessRunner,
  disk: string,
  range: ByteRange,
  workDir: string,
  fn: (dir: string) => Promise<T>,
): Promise<T> {
  await mkdir(workDir, { recursive: true, mode: 0o700 });
  const dir = await mkdtemp(join(workDir, "slot-"));
  try {
    await runTool(
      proc,
      ["mount", "-o", `ro,loop,offset=${range.offset},sizelimit=${range.length}`, disk, dir],
      `mounting the new slot`,
    );
    try {
      return await fn(dir);
    } finally {
      await runTool(proc, ["umount", dir], "unmounting the new slot").catch(() =>
        runTool(proc, ["umount", "-l", dir], "umount -l"),
      );
    }
  } finally {
    await rmdir(dir).catch(() => undefined);
  }
}

/** Resolves a path inside a mounted root, following symlinks as that root would (never escaping it). */
export async function resolveInRoot(root: string, path: string): Promise<string | undefined> {
  let current = normalize(path).replace(/^\/+/, "");
  for (let depth = 0; depth < 16; depth++) {
    const full = join(root, current);
    const st = await lstat(full).catch(() => undefined);
    if (!st) return undefined;
    if (!st.isSymbolicLink()) return st.isFile() ? full : undefined;
    const target = await readlink(full);
    current = normalize(isAbsolute(target) ? target : join(dirname(current), target))
      .replace(/^(\.\.\/)+/, "")
      .replace(/^\/+/, "");
  }
  return undefined;
}

export async function findKernel(root: string): Promise<{ kernel: string; initrd: string | undefined }> {
  let kernel: string | undefined;
  for (const candidate of ["boot/vmlinuz", "vmlinuz", "boot/Image", "boot/image"]) {
    kernel = await resolveInRoot(root, candidate);
    if (kernel) break;
  }
  if (!kernel) throw new EosError("SLOT", "the new root has no kernel (/boot/vmlinuz or /boot/Image)");
  let initrd: string | undefined;
  for (const candidate of ["boot/initrd.img", "initrd.img", "boot/initrd"]) {
    initrd = await resolveInRoot(root, candidate);
    if (initrd) break;
  }
  return { kernel, initrd };
}
