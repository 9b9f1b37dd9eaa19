/**
 * The Firecracker configuration file (`firecracker --no-api --config-file
 * FILE`): a FullVmConfiguration as Firecracker's API description
 * (src/firecracker/swagger/firecracker.yaml) documents it. Only documented
 * keys are written; Firecracker rejects unknown ones.
 *
 * Firecracker boots an uncompressed ELF kernel (vmlinux) on x86_64, not a
 * bzImage: `kernelFormat` tells which one a file is.
 */
import { EosError } from "../errors.ts";
import type { CacheType, VmPlan } from "./vm.ts";

export interface FirecrackerBootSource {
  kernel_image_path: string;
  initrd_path?: string;
  boot_args: string;
}

export interface FirecrackerDrive {
  drive_id: string;
  path_on_host: string;
  is_root_device: boolean;
  is_read_only: boolean;
  cache_type: CacheType;
  io_engine?: "Sync" | "Async";
}

export interface FirecrackerMachineConfig {
  vcpu_count: number;
  mem_size_mib: number;
  smt: boolean;
}

export interface FirecrackerNetworkInterface {
  iface_id: string;
  host_dev_name: string;
  guest_mac: string;
}

export interface FirecrackerVsock {
  guest_cid: number;
  uds_path: string;
}

export interface FirecrackerConfig {
  "boot-source": FirecrackerBootSource;
  drives: FirecrackerDrive[];
  "machine-config": FirecrackerMachineConfig;
  "network-interfaces": FirecrackerNetworkInterface[];
  vsock: FirecrackerVsock;
  logger?: {
    log_path: string;
    level: "Error" | "Warning" | "Info" | "Debug" | "Trace" | "Off";
    show_level: boolean;
  };
}

export interface FirecrackerPlan extends VmPlan {
  /** Host side of the vsock device: Firecracker listens on this Unix socket. */
  vsockUds: string;
  guestCid?: number;
  /** A tap device for the guest's network, with the MAC to give the guest. */
  tap?: { name: string; mac: string } | undefined;
  /** Firecracker's own log (PILOT_DEBUG). */
  logPath?: string | undefined;
}

export function firecrackerConfig(plan: FirecrackerPlan): FirecrackerConfig {
  for (const [what, path] of [
    ["kernel", plan.kernel],
    ["initrd", plan.initrd],
    ["rootfs", plan.rootfs],
    ["overlay", plan.overlay],
    ["vsock socket", plan.vsockUds],
    ["log", plan.logPath],
  ] as const) {
    if (path !== undefined && !path.startsWith("/")) {
      throw new EosError("INTERNAL", `firecracker ${what} path ${JSON.stringify(path)} must be absolute`);
    }
  }
  if (
    !Number.isInteger(plan.vcpuCount) ||
    plan.vcpuCount < 1 ||
    plan.vcpuCount > 32 ||
    (plan.vcpuCount > 1 && plan.vcpuCount % 2)
  ) {
    throw new EosError(
      "CONFIG",
      `vcpu_count ${plan.vcpuCount}: Firecracker takes 1 or an even number up to 32`,
    );
  }
  if (!Number.isInteger(plan.memSizeMib) || plan.memSizeMib < 1) {
    throw new EosError("CONFIG", `mem_size_mib ${plan.memSizeMib} must be a positive whole number`);
  }
  const bootSource: FirecrackerBootSource = { kernel_image_path: plan.kernel, boot_args: plan.bootArgs };
  if (plan.initrd) bootSource.initrd_path = plan.initrd;
  const drives: FirecrackerDrive[] = [
    {
      drive_id: "rootfs",
      path_on_host: plan.rootfs,
      is_root_device: true,
      is_read_only: true,
      cache_type: plan.cacheType,
    },
  ];
  if (plan.overlay) {
    drives.push({
      drive_id: "overlay",
      path_on_host: plan.overlay,
      is_root_device: false,
      is_read_only: false,
      cache_type: plan.cacheType,
    });
  }
  const config: FirecrackerConfig = {
    "boot-source": bootSource,
    drives,
    "machine-config": { vcpu_count: plan.vcpuCount, mem_size_mib: plan.memSizeMib, smt: false },
    "network-interfaces": plan.tap
      ? [{ iface_id: "eth0", host_dev_name: plan.tap.name, guest_mac: plan.tap.mac }]
      : [],
    vsock: { guest_cid: plan.guestCid ?? 3, uds_path: plan.vsockUds },
  };
  if (plan.logPath) config.logger = { log_path: plan.logPath, level: "Warning", show_level: true };
  return config;
}

/** Firecracker's `CONNECT <port>\n` handshake on the vsock Unix socket, and its answer. */
export function vsockConnectLine(port: number): string {
  return `CONNECT ${port}\n`;
}

export function isVsockOk(line: string): boolean {
  return /^OK \d+$/.test(line.trim());
}

/** Tap device names: `fc` + 10 hex digits (15 characters at most: IFNAMSIZ). */
export function tapName(seed: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < seed.length; i++) {
    h ^= seed.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  let h2 = 0x01000193;
  for (let i = seed.length - 1; i >= 0; i--) {
    h2 ^= seed.charCodeAt(i);
    h2 = Math.imul(h2, 0x811c9dc5) >>> 0;
  }
  return `fc${h.toString(16).padStart(8, "0")}${(h2 & 0xff).toString(16).padStart(2, "0")}`;
}

/** A locally administered unicast MAC derived from the tap name. */
export function guestMac(tap: string): string {
  const hex = tap.slice(2).padEnd(10, "0").slice(0, 10);
  const bytes = ["06", ...(hex.match(/../g) ?? [])];
  return bytes.join(":");
}

/** What a kernel file is, from its first bytes. */
export function kernelFormat(head: Uint8Array): "elf" | "bzimage" | "unknown" {
  if (head.length >= 4 && head[0] === 0x7f && head[1] === 0x45 && head[2] === 0x4c && head[3] === 0x46)
    return "elf";
  // bzImage: "HdrS" at offset 0x202
  if (
    head.length >= 0x206 &&
    head[0x202] === 0x48 &&
    head[0x203] === 0x64 &&
    head[0x204] === 0x72 &&
    head[0x205] === 0x53
  ) {
    return "bzimage";
  }
  return "unknown";
}
