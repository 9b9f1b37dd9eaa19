/**
 * The files eos build lays over a Debian root so that it boots and updates
 * as EOS: the initramfs overlay hook, fstab, os-release, os-update.yml,
 * update_commit.service, the command wrappers and root's access.
 */
import { ARCH_PROFILES, isArchitecture } from "./arch.ts";
import { storageConf } from "./containers.ts";
import type { ImageDescription } from "./description.ts";

export interface RootFile {
  path: string;
  mode: number;
  content: string;
  /** A symbolic link to this target instead of a file with `content`. */
  link?: string;
}

const SSH_HOST_KEY = "/etc/ssh/ssh_host_ed25519_key";

/**
 * sshd's host key is made at boot (in the tmpfs overlay): an image never
 * ships one. Only Ed25519: `ssh-keygen -A` also made an RSA key, which took
 * 5.7 s of an idle TCG guest and held ssh.service for most of its 25 s in a
 * booting one; on a small device it is the slowest step before SSH answers.
 */
export const SSH_HOST_KEY_FILES: readonly { path: string; content: string }[] = [
  {
    path: "/etc/systemd/system/ssh.service.d/eos-host-keys.conf",
    content:
      "[Service]\nExecStartPre=\n" +
      `ExecStartPre=/bin/sh -c 'test -e ${SSH_HOST_KEY} || exec /usr/bin/ssh-keygen -q -t ed25519 -N "" -f ${SSH_HOST_KEY}'\n` +
      "ExecStartPre=/usr/sbin/sshd -t\n",
  },
  { path: "/etc/ssh/sshd_config.d/eos-host-keys.conf", content: `HostKey ${SSH_HOST_KEY}\n` },
];

function yamlString(value: string): string {
  return JSON.stringify(value);
}

/** An initramfs-tools script or hook: the prerequisites boilerplate, then `body`. */
function initramfsScript(body: string, comment = ""): string {
  return `#!/bin/sh\n${comment}PREREQ=""\nprereqs() { echo "$PREREQ"; }\ncase "$1" in\nprereqs) prereqs; exit 0 ;;\nesac\n${body}`;
}

const INITRAMFS_OVERLAY_HOOK = initramfsScript(
  `. /scripts/functions
# Shell builtins only: the initramfs has no grep (klibc, no busybox).
read -r cmdline < /proc/cmdline
case " $cmdline " in *" eos.overlay=off "*) exit 0 ;; esac
mkdir -p /eos.lower /eos.rw
mount -n -o move "\${rootmnt}" /eos.lower || panic "EOS: cannot move the root slot aside"
mount -n -t tmpfs -o mode=0755 eos-rw /eos.rw || panic "EOS: cannot mount the tmpfs upper layer"
mkdir -p /eos.rw/upper /eos.rw/work
if ! mount -n -t overlay -o lowerdir=/eos.lower,upperdir=/eos.rw/upper,workdir=/eos.rw/work eos-root "\${rootmnt}"; then
  panic "EOS: cannot mount the overlay root"
fi
mkdir -p "\${rootmnt}/media/root-ro" "\${rootmnt}/media/root-rw"
mount -n -o move /eos.lower "\${rootmnt}/media/root-ro"
mount -n -o move /eos.rw "\${rootmnt}/media/root-rw"
exit 0
`,
  "# EOS: the read-only root slot becomes the lower layer of an overlay whose\n" +
    "# upper layer is tmpfs, like overlayroot=tmpfs. The lower and upper mounts\n" +
    "# move under the new root (/run/eos/...), or run-init refuses to switch.\n",
);

// The root slot under dm-verity (src/core/verity.ts has the layout): opened
// in local-premount, before the initramfs mounts it, so that the mount (and
// every later read) goes through the check. local-premount runs before the
// initramfs has waited for the root device, so the script waits for it the
// same way (local_device_setup); the new ROOT reaches the init script
// through /conf/param.conf.
const INITRAMFS_VERITY_SCRIPT = initramfsScript(`. /scripts/functions
. /scripts/local
verity=
for word in $(cat /proc/cmdline); do
  case "$word" in
  eos.verity=*) verity="\${word#eos.verity=}" ;;
  esac
done
if [ -z "$verity" ]; then
  log_warning_msg "EOS: no eos.verity= on the kernel command line: the root slot is not integrity-checked"
  exit 0
fi
hash="\${verity%%:*}"
blocks="\${verity#*:}"
case "$hash" in
*[!0-9a-f]* | "") panic "EOS: eos.verity=$verity: the root hash is not hexadecimal" ;;
esac
case "$blocks" in
*[!0-9]* | "") panic "EOS: eos.verity=$verity: the block count is not a number" ;;
esac
[ "\${#hash}" -eq 64 ] || panic "EOS: eos.verity=$verity: the root hash is not 64 digits"
local_device_setup "\${ROOT}" "root file system"
slot="\${DEV}"
# libdevmapper makes the node itself: this initramfs has no device-mapper udev rules to wait for.
if ! DM_DISABLE_UDEV=1 veritysetup open --no-superblock --format=1 --hash=sha256 --data-block-size=4096 \\
  --hash-block-size=4096 --salt=- --data-blocks="$blocks" --hash-offset=$(((blocks + 1) * 4096)) \\
  "$slot" eos-root "$slot" "$hash"; then
  panic "EOS: cannot open the root slot $slot under dm-verity"
fi
# Probing the file system reads its superblock through the mapping (klibc's
# dd does not report the read error): a slot changed since it was verified
# fails here, before anything runs from it, instead of leaving the initramfs
# to wait out rootdelay for a root it cannot identify.
if [ "$(get_fstype /dev/mapper/eos-root 2>/dev/null)" != squashfs ]; then
  panic "EOS: the root slot $slot fails its dm-verity check (changed or damaged since it was written); rebooting so that the boot loader can fall back"
fi
echo "ROOT=/dev/mapper/eos-root" >>/conf/param.conf
exit 0
`);

const INITRAMFS_VERITY_HOOK = initramfsScript(`. /usr/share/initramfs-tools/hook-functions
copy_exec /usr/sbin/veritysetup /sbin
manual_add_modules dm_verity
exit 0
`);

/**
 * The serial tty the kernel's console is on: the last console= (the one
 * /dev/console is), e.g. ttyS0 on x86_64, ttyAMA0 on arm64 QEMU virt.
 */
export function serialConsole(cmdline: readonly string[]): string {
  const consoles = cmdline.filter((w) => w.startsWith("console=")).map((w) => w.slice(8).split(",")[0] ?? "");
  const last = consoles.at(-1);
  return last && /^tty[A-Za-z]+[0-9]+$/.test(last) ? last : "ttyS0";
}

/**
 * Files every EOS root carries, generated from the description: boot
 * (initramfs overlay hook and modules, fstab), identity (os-release,
 * hostname), update (os-update.yml, update_commit.service), access (root's
 * SSH keys, serial autologin for development images).
 */
export function rootFiles(
  desc: ImageDescription,
  options: {
    keyNames: string[];
    commands: string[];
    nodePath: string | undefined;
    /** systemd/update_commit.service as the project ships it. */
    updateCommitUnit: string;
    /** The update server's units (systemd/, file name → text): installed, not enabled, where the root has os-update-server. */
    serverUnits?: Map<string, string>;
    /** The architecture the root is built for, as manifests name it (x86_64, aarch64). */
    architecture: string;
  },
): RootFile[] {
  const files: RootFile[] = [];
  const add = (path: string, content: string, mode = 0o644) => files.push({ path, mode, content });
  const arch = isArchitecture(options.architecture) ? ARCH_PROFILES[options.architecture] : undefined;
  const modules = [
    "squashfs",
    "overlay",
    ...(desc.root.verity ? ["dm_verity"] : []),
    ...(arch?.initramfsModules ?? []),
    ...desc.kernel.modules,
  ];
  add(
    "/etc/initramfs-tools/modules",
    `# EOS: the root slot is ${desc.root.filesystem}, the running root an overlay\n${[...new Set(modules)].join("\n")}\n`,
  );
  if (arch?.initramfsModulesPolicy) {
    // conf.d is read after initramfs.conf: the package's own file stays untouched.
    add(
      "/etc/initramfs-tools/conf.d/eos-modules",
      `# EOS: the modules file above is the whole set (plus dependencies), not an addition\nMODULES=${arch.initramfsModulesPolicy}\n`,
    );
  }
  add("/etc/initramfs-tools/scripts/init-bottom/eos-overlay", INITRAMFS_OVERLAY_HOOK, 0o755);
  if (desc.root.verity) {
    add("/etc/initramfs-tools/scripts/local-premount/eos-verity", INITRAMFS_VERITY_SCRIPT, 0o755);
    add("/etc/initramfs-tools/hooks/eos-verity", INITRAMFS_VERITY_HOOK, 0o755);
  }
  // nofail: a missing ESP must not stop the boot. The device timeout is long because udev can
  // take more than 30 s to name the partition on a slow or loaded machine, and a mount given up
  // once stays unmounted: os-update and the commit unit would then find no boot control block.
  add(
    "/etc/fstab",
    "# EOS: / is an overlay of the read-only root slot and tmpfs (set up in the initramfs)\n" +
      "PARTLABEL=p.UEFI /boot/efi vfat umask=0077,nofail,x-systemd.device-timeout=180s 0 0\n",
  );
  const pretty = desc.pretty_name ?? `EOS ${desc.version}`;
  add(
    "/usr/lib/os-release",
    [
      `PRETTY_NAME="${pretty}"`,
      `NAME="EOS"`,
      `VERSION_ID="${desc.version}"`,
      `VERSION="${desc.version}"`,
      `ID=eos`,
      `ID_LIKE=debian`,
      `IMAGE_ID="${desc.name}"`,
      `IMAGE_VERSION="${desc.version}"`,
      `HOME_URL="https://github.com/OSInside/eos"`,
      "",
    ].join("\n"),
  );
  add("/etc/hostname", `${desc.hostname}\n`);
  add("/etc/issue", `${pretty} \\n \\l\n\n`);
  add("/etc/issue.net", `${pretty}\n`);
  add(
    "/etc/hosts",
    `127.0.0.1\tlocalhost\n127.0.1.1\t${desc.hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n`,
  );
  add("/usr/lib/systemd/system/update_commit.service", options.updateCommitUnit);
  // As the package ships them: a description enables them to make a server image (images/update-server.yaml).
  if (options.commands.includes("os-update-server"))
    for (const [name, text] of options.serverUnits ?? []) add(`/usr/lib/systemd/system/${name}`, text);
  if (desc.containers.length > 0) add("/etc/containers/storage.conf", storageConf());
  add("/etc/eos/image", `NAME=${desc.name}\nVERSION=${desc.version}\nARCH=${options.architecture}\n`);

  // The device's update configuration, in the original map shape.
  const u = desc.update;
  const lines = ["# EOS device update configuration (written by eos build)", "update:"];
  lines.push(`  name: ${yamlString(u.name ?? desc.name)}`);
  if (u.url) lines.push(`  url: ${yamlString(u.url)}`);
  if (u.server) lines.push(`  server: ${yamlString(u.server)}`);
  if (u.token) lines.push(`  token: ${yamlString(u.token)}`);
  if (u.tries !== undefined) lines.push(`  tries: ${u.tries}`);
  if (options.keyNames.length > 0) {
    lines.push("  keys:");
    for (const k of options.keyNames) lines.push(`    - ${yamlString(`/usr/share/eos/keys/${k}`)}`);
  }
  add("/etc/os-update.yml", `${lines.join("\n")}\n`, u.token ? 0o600 : 0o644);

  // The EOS commands: links to the node bundles (each starts with `#!/usr/bin/env node`). A
  // link, not a wrapper script: a flake's link to a pilot must reach node with the flake's
  // own name as argv[1], which a wrapper would replace with the bundle's.
  if (options.nodePath) {
    for (const name of options.commands) {
      files.push({ path: `/usr/bin/${name}`, mode: 0o755, content: "", link: `../lib/eos/${name}.mjs` });
    }
  }

  const keys = desc.users.root.ssh_authorized_keys;
  if (keys.length > 0) add("/root/.ssh/authorized_keys", `${keys.join("\n")}\n`, 0o600);
  // The build drops the host keys the package made (they would be every device's): without
  // this, a root with sshd but no authorized keys boots with ssh.service failed.
  if (keys.length > 0 || desc.packages.some((p) => p.split("=")[0] === "openssh-server"))
    for (const f of SSH_HOST_KEY_FILES) add(f.path, f.content);
  if (desc.users.root.autologin_serial) {
    add(
      `/etc/systemd/system/serial-getty@${serialConsole(desc.kernel.cmdline)}.service.d/eos-autologin.conf`,
      "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM\n",
    );
  }
  return files;
}
