/**
 * VM flakes: flake-pilot's `vm:` schema, the YAML `flake-ctl firecracker
 * register` writes, and the kernel command line the pilot boots with. Pure.
 *
 * Additive keys (not in flake-pilot): `vm.runtime.engine` (firecracker |
 * qemu | auto), `vm.runtime.network` (false: no network device) and
 * `vm.runtime.qemu` (machine, accel).
 */
import { EosError } from "../errors.ts";
import {
  INCLUDE_SPEC,
  checkSpec,
  mergeFlakeDocuments,
  scalarString,
  stringList,
  type FlakeDocument,
  type Spec,
} from "./flake-config.ts";
import { parseOverlaySize } from "./size.ts";

/** `%options` firecracker-pilot takes from the caller's arguments. */
export const VM_PILOT_OPTIONS = ["remove", "port", "silent", "interactive", "progress"] as const;

export const DEFAULT_BOOT_ARGS = [
  "init=/usr/sbin/sci",
  "console=ttyS0",
  "root=/dev/vda",
  "acpi=off",
  "rd.neednet=1",
  "ip=dhcp",
  "quiet",
];
export const DEFAULT_MEM_MIB = 4096;
export const DEFAULT_VCPUS = 2;
/** The vsock port sci listens on (Firecracker); `%port:N` changes it. */
export const DEFAULT_VSOCK_PORT = 52;
/** The virtio-serial port name sci serves on (QEMU). */
export const SCI_PORT_NAME = "sci.0";

export type VmEngine = "firecracker" | "qemu";
export type CacheType = "Unsafe" | "Writeback";

/** What a VM boots, whichever engine runs it. */
export interface VmPlan {
  kernel: string;
  initrd?: string | undefined;
  bootArgs: string;
  rootfs: string;
  /** The writable overlay drive (vdb); none: sci keeps the upper layer in memory. */
  overlay?: string | undefined;
  cacheType: CacheType;
  vcpuCount: number;
  memSizeMib: number;
}

const targetPath: Spec = {
  type: "string",
  pattern: /^\/[^\s\0]*$/,
  patternText: "must be an absolute path without spaces",
};
const absolute: Spec = { type: "string", absolute: true };
const imageName: Spec = {
  type: "string",
  pattern: /^[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}$/,
  patternText: "must be a VM image name (letters, digits and . _ + -)",
};

export const vmFlakeSpec: Spec = {
  type: "map",
  required: ["vm"],
  fields: {
    vm: {
      type: "map",
      required: ["name", "host_app_path"],
      fields: {
        name: imageName,
        target_app_path: targetPath,
        host_app_path: absolute,
        base_vm: imageName,
        layers: { type: "list", item: imageName },
        runtime: {
          type: "map",
          fields: {
            runas: { type: "string" },
            resume: { type: "boolean" },
            force_vsock: { type: "boolean" },
            engine: {
              type: "string",
              pattern: /^(firecracker|qemu|auto)$/,
              patternText: "must be firecracker, qemu or auto",
            },
            network: { type: "boolean" },
            qemu: {
              type: "map",
              fields: {
                machine: {
                  type: "string",
                  pattern: /^(q35|pc|microvm)$/,
                  patternText: "must be q35, pc or microvm",
                },
                accel: {
                  type: "string",
                  pattern: /^(auto|kvm|tcg)$/,
                  patternText: "must be auto, kvm or tcg",
                },
              },
            },
            firecracker: {
              type: "map",
              fields: {
                boot_args: { type: "list", item: { type: "string" } },
                overlay_size: { type: "string" },
                rootfs_image_path: absolute,
                kernel_image_path: absolute,
                initrd_path: absolute,
                mem_size_mib: { type: "integer", min: 32, max: 1024 * 1024 },
                vcpu_count: { type: "integer", min: 1, max: 32 },
                cache_type: {
                  type: "string",
                  pattern: /^(Unsafe|Writeback)$/,
                  patternText: "must be Unsafe or Writeback",
                },
                /** flake-pilot's per-instance boot args, keyed by "@NAME". */
                instance: {
                  type: "dict",
                  value: { type: "map", fields: { boot_args: { type: "list", item: { type: "string" } } } },
                },
              },
            },
          },
        },
      },
    },
    include: INCLUDE_SPEC,
    container: { type: "empty", why: "this is a VM flake (flake-pilot writes container: ~ here)" },
  },
};

export interface VmFlake {
  /** The pulled VM image (its directory under /var/lib/firecracker/images). */
  name: string;
  targetAppPath: string;
  hostAppPath: string;
  baseVm: string | undefined;
  layers: string[];
  runtime: {
    runas: string | undefined;
    resume: boolean;
    forceVsock: boolean;
    engine: VmEngine | "auto";
    network: boolean;
    qemu: { machine: "q35" | "pc" | "microvm"; accel: "auto" | "kvm" | "tcg" };
    firecracker: {
      bootArgs: string[];
      /** flake-pilot's `instance: {"@NAME": {boot_args}}`: per-instance boot args. */
      instances?: Record<string, string[]> | undefined;
      /** As written (e.g. 20GiB); undefined: no overlay drive (memory upper layer). */
      overlaySize: string | undefined;
      overlayBytes: number | undefined;
      rootfsImagePath: string;
      kernelImagePath: string;
      initrdPath: string | undefined;
      memSizeMib: number;
      vcpuCount: number;
      cacheType: CacheType;
    };
  };
  include: { tar: string[]; path: string[] };
}

/** NAME.yaml + NAME.d/*.yaml (parsed, in sorted order), deep-merged into a VmFlake. */
export function vmFlakeFromDocuments(docs: FlakeDocument[]): VmFlake {
  const data = mergeFlakeDocuments(docs, vmFlakeSpec);
  const label = docs.length === 1 ? (docs[0]?.file ?? "flake") : `${docs[0]?.file ?? "flake"} (merged)`;
  return vmFlakeFromData(data, label);
}

export function vmFlakeFromData(data: Record<string, unknown>, label: string): VmFlake {
  checkSpec(data, vmFlakeSpec, label, "", true);
  const vm = data.vm as Record<string, unknown>;
  const runtime = (vm.runtime ?? {}) as Record<string, unknown>;
  const fc = (runtime.firecracker ?? {}) as Record<string, unknown>;
  const qemu = (runtime.qemu ?? {}) as Record<string, unknown>;
  const include = (data.include ?? {}) as Record<string, unknown>;
  const name = scalarString(vm.name) ?? "";
  const hostAppPath = scalarString(vm.host_app_path) ?? "";
  const imageDir = `/var/lib/firecracker/images/${name}`;
  const overlaySize = scalarString(fc.overlay_size);
  let overlayBytes: number | undefined;
  if (overlaySize !== undefined) {
    try {
      overlayBytes = parseOverlaySize(overlaySize, "overlay_size");
    } catch (error) {
      throw new EosError(
        "CONFIG",
        `${label}: vm.runtime.firecracker.overlay_size: ${(error as Error).message}`,
      );
    }
  }
  const flake: VmFlake = {
    name,
    targetAppPath: scalarString(vm.target_app_path) ?? hostAppPath,
    hostAppPath,
    baseVm: scalarString(vm.base_vm),
    layers: stringList(vm.layers),
    runtime: {
      runas: scalarString(runtime.runas),
      resume: runtime.resume === true,
      forceVsock: runtime.force_vsock === true,
      engine: (scalarString(runtime.engine) ?? "auto") as VmEngine | "auto",
      network: runtime.network !== false,
      qemu: {
        machine: (scalarString(qemu.machine) ?? "q35") as "q35" | "pc" | "microvm",
        accel: (scalarString(qemu.accel) ?? "auto") as "auto" | "kvm" | "tcg",
      },
      firecracker: {
        bootArgs: Array.isArray(fc.boot_args) ? stringList(fc.boot_args) : [...DEFAULT_BOOT_ARGS],
        instances: instanceBootArgs(fc.instance),
        overlaySize,
        overlayBytes,
        rootfsImagePath: scalarString(fc.rootfs_image_path) ?? `${imageDir}/rootfs`,
        kernelImagePath: scalarString(fc.kernel_image_path) ?? `${imageDir}/kernel`,
        initrdPath: scalarString(fc.initrd_path),
        memSizeMib: typeof fc.mem_size_mib === "number" ? fc.mem_size_mib : DEFAULT_MEM_MIB,
        vcpuCount: typeof fc.vcpu_count === "number" ? fc.vcpu_count : DEFAULT_VCPUS,
        cacheType: (scalarString(fc.cache_type) ?? "Writeback") as CacheType,
      },
    },
    include: { tar: stringList(include.tar), path: stringList(include.path) },
  };
  if (flake.baseVm !== undefined || flake.layers.length > 0) {
    throw new EosError("CONFIG", `${label}: vm.base_vm and vm.layers (delta VM images) are not supported`, {
      hint: "pull a complete KIS image and register the app on it",
    });
  }
  if (flake.runtime.firecracker.vcpuCount > 1 && flake.runtime.firecracker.vcpuCount % 2 === 1) {
    throw new EosError("CONFIG", `${label}: vm.runtime.firecracker.vcpu_count must be 1 or an even number`);
  }
  return flake;
}

function instanceBootArgs(value: unknown): Record<string, string[]> | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  const out: Record<string, string[]> = {};
  for (const [key, entry] of Object.entries(value as Record<string, unknown>)) {
    const args = (entry as { boot_args?: unknown } | null)?.boot_args;
    if (Array.isArray(args)) out[key.replace(/^@/, "")] = stringList(args);
  }
  return Object.keys(out).length > 0 ? out : undefined;
}

/**
 * The boot args of one call: the flake's, with those of `instance:` for the
 * caller's `@NAME` on top, as flake-pilot documents it: an instance's
 * `key=value` replaces the flake's argument of the same key, others are added.
 */
export function bootArgsForInstance(flake: VmFlake, instance: string | undefined): string[] {
  const base = flake.runtime.firecracker.bootArgs;
  const extra = instance === undefined ? undefined : flake.runtime.firecracker.instances?.[instance];
  if (!extra) return [...base];
  const keyOf = (arg: string) => arg.split("=")[0] ?? arg;
  const out = [...base];
  for (const arg of extra) {
    const at = out.findIndex((a) => keyOf(a) === keyOf(arg));
    if (at >= 0) out[at] = arg;
    else out.push(arg);
  }
  return out;
}

/**
 * The boot args flake-pilot's flake-ctl writes: its template's, without
 * `ip=` for --no-net, and with `sci_resume=1` / `sci_force_vsock=1` for
 * --resume / --force-vsock (the pilot here manages both itself and drops
 * them at launch; they are written so the file reads the same to either).
 */
export function registeredBootArgs(opts: {
  noNet?: boolean;
  resume?: boolean;
  forceVsock?: boolean;
}): string[] {
  const args = DEFAULT_BOOT_ARGS.filter((a) => !(opts.noNet && a.startsWith("ip=")));
  if (opts.resume) args.push("sci_resume=1");
  if (opts.forceVsock) args.push("sci_force_vsock=1");
  return args;
}

/** The document `flake-ctl firecracker register` writes (flake-pilot's layout). */
export function vmFlakeDocument(flake: VmFlake): Record<string, unknown> {
  const fc = flake.runtime.firecracker;
  const runtime: Record<string, unknown> = {
    runas: flake.runtime.runas ?? null,
    resume: flake.runtime.resume,
    force_vsock: flake.runtime.forceVsock,
  };
  if (flake.runtime.engine !== "auto") runtime.engine = flake.runtime.engine;
  if (!flake.runtime.network) runtime.network = false;
  const firecracker: Record<string, unknown> = {
    boot_args: fc.bootArgs,
    mem_size_mib: fc.memSizeMib,
    vcpu_count: fc.vcpuCount,
    cache_type: fc.cacheType,
  };
  if (fc.overlaySize !== undefined) firecracker.overlay_size = fc.overlaySize;
  firecracker.rootfs_image_path = fc.rootfsImagePath;
  firecracker.kernel_image_path = fc.kernelImagePath;
  if (fc.initrdPath !== undefined) firecracker.initrd_path = fc.initrdPath;
  runtime.firecracker = firecracker;
  return {
    vm: {
      name: flake.name,
      target_app_path: flake.targetAppPath,
      host_app_path: flake.hostAppPath,
      runtime,
    },
    include: { tar: flake.include.tar, path: flake.include.path },
  };
}

// ---------------------------------------------------------------- boot

export interface BootArgsOptions {
  engine: VmEngine;
  /** The overlay drive is there (/dev/vdb). */
  overlay: boolean;
  resume: boolean;
  debug: boolean;
  vsockPort: number;
  /** Static guest address for sci (`sci.net=ADDR/PREFIX,GATEWAY`). */
  net?: string | undefined;
}

/**
 * Keys the pilot sets itself; the flake's values for them are dropped. That
 * includes flake-pilot's `sci_resume=1` / `sci_force_vsock=1`, which its
 * flake-ctl writes into boot_args: here resume comes from runtime.resume and
 * the channel is always the pilot's.
 */
const MANAGED = /^(overlay_root|sci\.[a-z]+|sci_[a-z_]+|panic)=/;

/**
 * The kernel command line: the flake's boot args, then what the pilot
 * manages (channel, overlay, resume). Each argument is checked: no spaces,
 * no quotes, nothing the kernel would split differently.
 */
export function bootArgs(flakeArgs: string[], opts: BootArgsOptions): string {
  const args = flakeArgs.filter((a) => !MANAGED.test(a));
  for (const a of args) {
    if (!/^[\x21-\x7e]+$/.test(a) || a.includes('"')) {
      throw new EosError(
        "CONFIG",
        `boot argument ${JSON.stringify(a)} must be printable ASCII without spaces or quotes`,
      );
    }
  }
  if (opts.overlay) args.push("overlay_root=/dev/vdb");
  args.push(
    opts.engine === "qemu" ? `sci.channel=virtio:${SCI_PORT_NAME}` : `sci.channel=vsock:${opts.vsockPort}`,
  );
  if (opts.resume) args.push("sci.resume=1");
  if (opts.debug) args.push("sci.debug=1");
  if (opts.net) args.push(`sci.net=${opts.net}`);
  // A guest that panics must end the VM (QEMU: -no-reboot; Firecracker stops on reboot).
  args.push("panic=-1");
  const line = args.join(" ");
  if (line.length > 2048)
    throw new EosError("CONFIG", `the kernel command line is ${line.length} bytes; at most 2048`);
  return line;
}

/** `NAME` or `NAME@INSTANCE`: the key of a VM instance's files. */
export function instanceKey(flakeName: string, instance: string | undefined): string {
  return instance ? `${flakeName}@${instance}` : flakeName;
}

/** `%port:N`: a vsock port for this call (1024..65535 outside the well-known range, or 52). */
export function parsePortOption(value: string | true | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (value === true || !/^\d{1,5}$/.test(value)) {
    throw new EosError("USAGE", `%port needs a number: %port:N`);
  }
  const port = Number(value);
  if (port < 1 || port > 65535) throw new EosError("USAGE", `%port:${value}: a port is 1..65535`);
  return port;
}
