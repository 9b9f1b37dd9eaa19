/**
 * QEMU as the engine of a VM flake: the same kernel, initrd, root image and
 * overlay that Firecracker would boot, on a q35 (or pc) machine with
 * virtio-pci devices. sci's channel is a virtio-serial port whose host side
 * is a Unix socket QEMU listens on (vhost-vsock needs /dev/vhost-vsock,
 * which hosts often lack; a serial port needs nothing).
 */
import { EosError } from "../errors.ts";
import { SCI_PORT_NAME, type VmPlan } from "./vm.ts";

export interface QemuPlan extends VmPlan {
  name: string;
  machine: "q35" | "pc" | "microvm";
  accel: "kvm" | "tcg";
  /** QEMU listens here for the pilot (sci's channel). */
  socket: string;
  /** The serial console goes into this file. */
  consoleLog: string;
  network: boolean;
}

/** Guest address under QEMU user networking (sci sets it; no DHCP client needed). */
export const QEMU_USER_NET = "10.0.2.15/24,10.0.2.2";

/** A value inside a QEMU option list: commas are doubled, as QEMU's option parser wants. */
export function qemuValue(value: string): string {
  if (value.includes("\0") || value.includes("\n")) {
    throw new EosError("USAGE", `${JSON.stringify(value)} cannot be passed to QEMU`);
  }
  return value.replace(/,/g, ",,");
}

export function qemuArgv(plan: QemuPlan): string[] {
  const cache = plan.cacheType === "Unsafe" ? "unsafe" : "writeback";
  const virtio = plan.machine === "microvm" ? "device" : "pci";
  const argv = [
    "-name",
    qemuValue(`eos-flake-${plan.name}`),
    "-machine",
    plan.machine === "microvm" ? "microvm,x-option-roms=off,rtc=on" : plan.machine,
    "-accel",
    plan.accel,
  ];
  if (plan.accel === "kvm") argv.push("-cpu", "host");
  argv.push(
    "-m",
    String(plan.memSizeMib),
    "-smp",
    String(plan.vcpuCount),
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-no-reboot",
    "-kernel",
    plan.kernel,
  );
  if (plan.initrd) argv.push("-initrd", plan.initrd);
  argv.push(
    "-append",
    plan.bootArgs,
    "-chardev",
    `file,id=console,path=${qemuValue(plan.consoleLog)}`,
    "-serial",
    "chardev:console",
    "-drive",
    `id=rootfs,file=${qemuValue(plan.rootfs)},format=raw,if=none,readonly=on,cache=${cache}`,
    "-device",
    `virtio-blk-${virtio},drive=rootfs`,
  );
  if (plan.overlay) {
    argv.push(
      "-drive",
      `id=overlay,file=${qemuValue(plan.overlay)},format=raw,if=none,cache=${cache},discard=unmap`,
      "-device",
      `virtio-blk-${virtio},drive=overlay`,
    );
  }
  argv.push(
    "-device",
    `virtio-serial-${virtio}`,
    "-chardev",
    `socket,id=sci,path=${qemuValue(plan.socket)},server=on,wait=off`,
    "-device",
    `virtserialport,chardev=sci,name=${SCI_PORT_NAME}`,
  );
  if (plan.network) argv.push("-netdev", "user,id=net0", "-device", `virtio-net-${virtio},netdev=net0`);
  return argv;
}
