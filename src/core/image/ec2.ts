/**
 * The EC2 profile: the AB disk contract unchanged, plus what an instance
 * imported as a UEFI AMI needs. The kernel is Debian's cloud kernel
 * (src/core/image/arch.ts), which carries the NVMe (root volume) and ENA
 * (network) drivers; the console is the serial port EC2's serial console and
 * get-console-output read; networking is DHCP; and eos-ec2-init.service puts
 * the instance's SSH keys and host name in place before sshd, from the
 * metadata service, without cloud-init.
 */
import { EosError } from "../errors.ts";
import { SSH_HOST_KEY_FILES, type RootFile } from "./root-files.ts";
import type { ImageDescription, Profile } from "./description.ts";
import { rpiDescription } from "./rpi.ts";

export const EC2_INIT_UNIT = "eos-ec2-init.service";
/** EC2's serial console (x86_64 and Graviton alike) is ttyS0 at 115200 baud. */
export const EC2_CONSOLE = "console=ttyS0,115200";

function withAll(list: readonly string[], add: readonly string[]): string[] {
  return [...list, ...add.filter((x) => !list.includes(x))];
}

/**
 * The description as the profile builds it, and what the profile changed
 * that the description said otherwise (the build logs it). AB and Static
 * build the description as it is; RPI is src/core/image/rpi.ts.
 */
export function profileDescription(
  desc: ImageDescription,
  profile: Profile,
  file: string,
): { desc: ImageDescription; notes: string[] } {
  if (profile === "RPI") return rpiDescription(desc, file);
  if (profile !== "EC2") return { desc, notes: [] };
  if (!desc.eos.commands || desc.eos.node === "none")
    throw new EosError(
      "CONFIG",
      `${file}: the EC2 profile runs eos-ec2-init at boot, which needs eos.commands and a Node (eos.node host or debian)`,
    );
  const notes: string[] = [];
  const units = ["systemd-networkd.service", "ssh.service", EC2_INIT_UNIT];
  for (const key of ["disable", "mask"] as const)
    for (const u of desc.services[key].filter((s) => units.includes(s)))
      notes.push(`services.${key} lists ${u}; the EC2 profile enables it`);
  if (desc.users.root.autologin_serial)
    notes.push("users.root.autologin_serial is off in the EC2 profile (EC2's serial console reaches it)");
  const cmdline = desc.kernel.cmdline.filter((w) => !/^console=ttyS0(,|$)/.test(w));
  return {
    desc: {
      ...desc,
      packages: withAll(desc.packages, ["openssh-server"]),
      services: {
        enable: withAll(desc.services.enable, units),
        disable: desc.services.disable.filter((s) => !units.includes(s)),
        mask: desc.services.mask.filter((s) => !units.includes(s)),
      },
      users: { root: { ...desc.users.root, autologin_serial: false } },
      // The last console= is /dev/console: systemd's status lines go to the serial port.
      kernel: {
        ...desc.kernel,
        cmdline: [...cmdline, EC2_CONSOLE],
        modules: withAll(desc.kernel.modules, ["nvme"]),
      },
    },
    notes,
  };
}

/** Files the EC2 profile adds to the root, beside the description's. */
export function ec2RootFiles(initUnit: string): RootFile[] {
  return [
    { path: `/usr/lib/systemd/system/${EC2_INIT_UNIT}`, mode: 0o644, content: initUnit },
    // With no key in the description, nothing else makes sshd's host key.
    ...SSH_HOST_KEY_FILES.map((f) => ({ path: f.path, mode: 0o644, content: f.content })),
    {
      // /usr/lib: the lowest precedence, a description's own .network file wins.
      path: "/usr/lib/systemd/network/80-eos-ec2.network",
      mode: 0o644,
      content:
        "# EOS, profile EC2: DHCP on the instance's ENA interface\n[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n",
    },
  ];
}
