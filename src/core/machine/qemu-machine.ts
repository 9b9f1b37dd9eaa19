/**
 * The QEMU command line of an EOS machine (`eos run`, the vm tier): UEFI
 * firmware with its own variables, the disk as virtio-blk behind a qcow2
 * overlay, user networking with SSH forwarded to loopback, the serial
 * console on stdio, and optionally a registry disk, a TPM 2.0 (swtpm) and a
 * link to other guests.
 */
import { EosError } from "../errors.ts";
import type { Architecture } from "../image/arch.ts";
import { formatArgv } from "../shell-quote.ts";

export type Accel = "kvm" | "tcg";

export interface MachinePlan {
  /** Default x86_64 (q35); aarch64 is QEMU's virt board. */
  architecture?: Architecture;
  accel: Accel;
  cpus: number;
  memoryMiB: number;
  firmwareCode: string;
  firmwareVars: string;
  disk: string;
  sshPort: number;
  /** Console and QEMU monitor on the caller's terminal. */
  interactive: boolean;
  registryDisk?: string | undefined;
  tpmSocket?: string | undefined;
  /** A reset ends QEMU instead of restarting the machine (the disk stays as the reset left it). */
  noReboot?: boolean | undefined;
  /** The boot disk's bus: virtio-blk (default) or NVMe, as EC2's Nitro instances attach volumes. */
  diskBus?: "virtio" | "nvme" | undefined;
  /** User networking's guest network, e.g. 169.254.0.0/16 (default QEMU's 10.0.2.0/24). */
  guestNet?: string | undefined;
  /**
   * Guest connections to ADDRESS:PORT, each handed to a new run of the command
   * on the host (QEMU guestfwd ...-cmd:). ADDRESS must lie in guestNet.
   */
  guestForwards?: Array<{ address: string; port: number; command: string[] }> | undefined;
  /**
   * A second NIC on a link between guests of this host: a QEMU socket netdev
   * on 127.0.0.1:PORT, which one machine listens on and the others connect
   * to (started after it). Each guest needs its own MAC: QEMU would give every
   * machine's second NIC the same one.
   */
  guestLink?: GuestLink | undefined;
}

export interface GuestLink {
  role: "listen" | "connect";
  port: number;
  mac: string;
}

function linkNetdev(link: GuestLink): string[] {
  if (!Number.isInteger(link.port) || link.port < 1 || link.port > 65535)
    throw new EosError("VM", `guest link port ${link.port} is not a TCP port`);
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(link.mac))
    throw new EosError("VM", `guest link MAC ${link.mac} is not six lower-case hex bytes`);
  return [
    "-netdev",
    `socket,id=net1,${link.role}=127.0.0.1:${link.port}`,
    "-device",
    `virtio-net-pci,netdev=net1,mac=${link.mac}`,
  ];
}

/** QEMU runs a guestfwd command through /bin/sh and splits its options at commas: plain words only. */
const FORWARD_WORD = /^[A-Za-z0-9_./:@+=-]+$/;

function netdev(p: MachinePlan): string {
  const parts = ["user", "id=net0", `hostfwd=tcp:127.0.0.1:${p.sshPort}-:22`];
  if (p.guestNet !== undefined) {
    if (!/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(p.guestNet))
      throw new EosError("VM", `guest network ${p.guestNet} is not ADDRESS/PREFIX`);
    parts.push(`net=${p.guestNet}`);
  }
  for (const f of p.guestForwards ?? []) {
    if (
      !/^\d{1,3}(\.\d{1,3}){3}$/.test(f.address) ||
      !Number.isInteger(f.port) ||
      f.port < 1 ||
      f.port > 65535
    )
      throw new EosError("VM", `guest forward ${f.address}:${f.port} is not IPv4:PORT`);
    const bad = f.command.find((w) => !FORWARD_WORD.test(w));
    if (bad !== undefined || f.command.length === 0)
      throw new EosError("VM", `guest forward command word ${JSON.stringify(bad ?? "")} is not a plain word`);
    parts.push(`guestfwd=tcp:${f.address}:${f.port}-cmd:${f.command.join(" ")}`);
  }
  return parts.join(",");
}

/** -machine and -cpu for each architecture and accelerator. */
function board(architecture: Architecture, accel: Accel): { machine: string; cpu: string } {
  if (architecture === "aarch64")
    return accel === "kvm"
      ? { machine: "virt,gic-version=max", cpu: "host" }
      : // pauth-impdef: the architected QARMA pointer authentication made boots twice as slow under TCG.
        // lpa2=off: no machine EOS targets (Pi 4/5, Graviton) has FEAT_LPA2, and with it trixie's
        // 6.12 kernel runs 52-bit VAs on 5 page-table levels, where kexec_load oopses in
        // trans_pgd_create_copy: os-update could never kexec on -cpu max.
        { machine: "virt", cpu: "max,pauth-impdef=on,lpa2=off" };
  return { machine: "q35", cpu: accel === "kvm" ? "host" : "max" };
}

export function machineArgv(p: MachinePlan): string[] {
  const architecture = p.architecture ?? "x86_64";
  const { machine, cpu } = board(architecture, p.accel);
  const args = [
    "-machine",
    machine,
    "-accel",
    p.accel === "kvm" ? "kvm" : "tcg,thread=multi",
    "-cpu",
    cpu,
    "-smp",
    String(p.cpus),
    "-m",
    String(p.memoryMiB),
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-drive",
    `if=pflash,format=raw,unit=0,readonly=on,file=${p.firmwareCode}`,
    "-drive",
    `if=pflash,format=raw,unit=1,file=${p.firmwareVars}`,
    "-drive",
    `if=none,id=disk0,format=qcow2,file=${p.disk},cache=unsafe,discard=unmap`,
    "-device",
    p.diskBus === "nvme"
      ? "nvme,serial=eos,drive=disk0,bootindex=0"
      : "virtio-blk-pci,drive=disk0,bootindex=0",
    "-netdev",
    netdev(p),
    "-device",
    "virtio-net-pci,netdev=net0",
    "-device",
    "virtio-rng-pci",
    "-chardev",
    p.interactive ? "stdio,id=con0,mux=on,signal=off" : "stdio,id=con0,signal=off",
    "-serial",
    "chardev:con0",
  ];
  if (p.interactive) args.push("-mon", "chardev=con0,mode=readline");
  if (p.registryDisk) {
    args.push(
      "-drive",
      `if=none,id=disk1,format=qcow2,file=${p.registryDisk},cache=unsafe`,
      "-device",
      "virtio-blk-pci,drive=disk1,serial=eos-registry",
    );
  }
  if (p.tpmSocket) {
    args.push(
      "-chardev",
      `socket,id=chrtpm,path=${p.tpmSocket}`,
      "-tpmdev",
      "emulator,id=tpm0,chardev=chrtpm",
      "-device",
      // virt has no ISA bus: its TPM is the memory-mapped TIS device.
      architecture === "aarch64" ? "tpm-tis-device,tpmdev=tpm0" : "tpm-tis,tpmdev=tpm0",
    );
  }
  if (p.guestLink) args.push(...linkNetdev(p.guestLink));
  if (p.noReboot) args.push("-no-reboot");
  return args;
}

/** ssh into the machine as root through the forwarded port; the command is quoted for the remote shell. */
export function guestSshArgv(key: string, port: number, command: string[], connectTimeout: number): string[] {
  return [
    "-i",
    key,
    "-p",
    String(port),
    ...[
      "StrictHostKeyChecking=no",
      "UserKnownHostsFile=/dev/null",
      "BatchMode=yes",
      "IdentitiesOnly=yes",
    ].flatMap((o) => ["-o", o]),
    ...[
      "LogLevel=ERROR",
      `ConnectTimeout=${connectTimeout}`,
      "ServerAliveInterval=5",
      "ServerAliveCountMax=6",
    ].flatMap((o) => ["-o", o]),
    "root@127.0.0.1",
    "--",
    formatArgv(command),
  ];
}

/**
 * getty's login prompt on a serial console. getty writes the host name and
 * "login: " apart, and the kernel's own lines can land between them
 * ("eos [   35.31] kvm_amd: …\r\nlogin: "), so the prompt is "login: " after
 * any white space or at a line's start, not only after the host name's space.
 */
export const LOGIN_PROMPT = /(?:^|\s)login: /m;

/** The login prompt, or an autologin root shell's prompt. */
export const LOGIN_OR_SHELL = /(?:^|\s)login: |root@[^:\s]+:[^#]*# /m;
