/**
 * The image description read by `eos build`: a YAML file a person can read
 * and edit (packages, overlay files, services, users, partition sizes, root
 * file system), validated here with errors naming the file and the key.
 * Also the pure parts of a build: the disk layout and the files every EOS
 * root carries (boot-critical, so they do not depend on the overlay).
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import { parseYamlConfig, isSafeImageName } from "../config.ts";
import { EosError } from "../errors.ts";
import { FIRMWARE_LABEL, REGISTRY_LABEL, ROOT_CLONE_LABEL, ROOT_LABEL } from "../manifest.ts";
import { PartitionType, usableRange, type GptTable } from "../gpt.ts";

export const PROFILES = ["AB", "Static"] as const;
export type Profile = (typeof PROFILES)[number];

const MiB = 1024 * 1024;

/** Sizes as `300M`, `300MiB`, `1G`, `64MB` or a number of bytes; always binary units. */
export function parseSize(text: string | number): number {
  if (typeof text === "number") {
    if (!Number.isInteger(text) || text <= 0) throw new Error("must be a positive number of bytes");
    return text;
  }
  const m = /^(\d+)\s*([KMG])?(i?B)?$/i.exec(text.trim());
  if (!m) throw new Error(`cannot read ${JSON.stringify(text)} as a size (e.g. 64M, 300MiB, 1G)`);
  const factor = { K: 1024, M: MiB, G: 1024 * MiB }[(m[2] ?? "").toUpperCase()] ?? 1;
  const bytes = Number(m[1]) * factor;
  if (bytes <= 0) throw new Error("must be larger than zero");
  return bytes;
}

const size = (minimum: number) =>
  z.union([z.string(), z.number()]).transform((value, ctx) => {
    try {
      const bytes = parseSize(value);
      if (bytes < minimum) throw new Error(`must be at least ${minimum / MiB} MiB`);
      if (bytes % MiB !== 0) throw new Error("must be a whole number of MiB");
      return bytes;
    } catch (error) {
      ctx.addIssue({ code: "custom", message: (error as Error).message });
      return z.NEVER;
    }
  });

/** Debian package names (policy 5.6.1), optionally with =version. */
const packageName = z
  .string()
  .regex(
    /^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$/,
    "must be a Debian package name (optionally =VERSION)",
  );

/** systemd unit names that reach `systemctl --root`. */
const unitName = z
  .string()
  .regex(
    /^[A-Za-z0-9:_.@-]+\.(service|socket|timer|target|path|mount)$/,
    "must be a systemd unit name such as ssh.service",
  );

/** A path relative to the description, or absolute; no NUL, newline or `..` components. */
const localPath = z
  .string()
  .min(1)
  .refine((p) => !/[\0\n]/.test(p) && !p.split("/").includes(".."), "must be a path without .. components");

const sshKey = z
  .string()
  .regex(
    /^(ssh-(ed25519|rsa)|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com) [A-Za-z0-9+/=]+( [^\n]*)?$/,
    "must be one OpenSSH public key line (ssh-ed25519 AAAA… comment)",
  );

const cmdlineWord = /^[A-Za-z0-9_.,:=/+@-]+$/;

export const ROOT_COMPRESSIONS = ["xz", "gzip", "lzo", "zstd"] as const;

export const imageDescriptionSchema = z
  .strictObject({
    name: z
      .string()
      .refine(isSafeImageName, "must be letters, digits and . _ + - (no /, no ..), at most 128 characters"),
    version: z
      .string()
      .regex(
        /^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$/,
        "must be letters, digits and . _ + ~ -, at most 64 characters",
      ),
    pretty_name: z
      .string()
      .regex(/^[^"\\\n$`]{1,80}$/, "must be one line without quotes, backslashes, $ or `")
      .optional(),
    hostname: z
      .string()
      .regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, "must be a host name (lowercase letters, digits, -)")
      .default("eos"),
    distribution: z
      .strictObject({
        suite: z.literal("bookworm").default("bookworm"),
        mirror: z
          .string()
          .regex(/^(https?|file):\/\/[^\s]+$/, "must be an http://, https:// or file:// URL")
          .default("http://deb.debian.org/debian"),
        components: z.array(z.enum(["main", "contrib", "non-free", "non-free-firmware"])).default(["main"]),
      })
      .prefault({}),
    packages: z.array(packageName).default([]),
    files: z.array(localPath).default([]),
    services: z
      .strictObject({
        enable: z.array(unitName).default([]),
        disable: z.array(unitName).default([]),
        mask: z.array(unitName).default([]),
      })
      .prefault({}),
    users: z
      .strictObject({
        root: z
          .strictObject({
            ssh_authorized_keys: z.array(sshKey).default([]),
            /** Development and test images only: a root shell on the serial console without a password. */
            autologin_serial: z.boolean().default(false),
          })
          .prefault({}),
      })
      .prefault({}),
    kernel: z
      .strictObject({
        cmdline: z
          .array(z.string().regex(cmdlineWord, "must be one kernel parameter without spaces or quotes"))
          .default(["console=ttyS0"]),
        modules: z.array(z.string().regex(/^[a-z0-9_-]+$/, "must be a kernel module name")).default([]),
      })
      .prefault({}),
    root: z
      .strictObject({
        filesystem: z.enum(["squashfs", "erofs"]).default("squashfs"),
        compression: z.enum(ROOT_COMPRESSIONS).default("xz"),
      })
      .prefault({}),
    partitions: z
      .strictObject({
        esp: size(32 * MiB).default(64 * MiB),
        root: size(64 * MiB).default(300 * MiB),
        spare: size(8 * MiB).default(64 * MiB),
      })
      .prefault({}),
    eos: z
      .strictObject({
        /** Copy the bundled EOS commands (dist/*.mjs) into /usr/lib/eos. */
        commands: z.boolean().default(true),
        /** host: the build machine's node binary; debian: bookworm's nodejs (Node 18); none. */
        node: z.enum(["host", "debian", "none"]).default("host"),
      })
      .prefault({}),
    update: z
      .strictObject({
        name: z
          .string()
          .refine(isSafeImageName, "must be letters, digits and . _ + - (no /, no ..)")
          .optional(),
        url: z
          .string()
          .regex(/^https?:\/\/[^\s]+$/, "must be an http:// or https:// URL")
          .optional(),
        server: z
          .string()
          .regex(/^([A-Za-z0-9._-]+@)?[A-Za-z0-9.:_\-[\]]+$/, "must be USER@HOST or HOST")
          .optional(),
        /** Trusted release public keys (PEM files, relative to the description). */
        keys: z.array(localPath).default([]),
        token: z
          .string()
          .regex(/^[A-Za-z0-9._~+/=-]{1,512}$/, "must be a token of letters, digits and . _ ~ + / = -")
          .optional(),
        tries: z.number().int().min(1).max(9).optional(),
      })
      .prefault({}),
  })
  .superRefine((d, ctx) => {
    // GRUB 2.06 (bookworm) reads squashfs with xz, gzip or lzo only: it has no
    // zstd squashfs and no erofs driver, and it loads the kernel from the slot.
    if (d.root.filesystem === "squashfs" && d.root.compression === "zstd") {
      ctx.addIssue({
        code: "custom",
        path: ["root", "compression"],
        message:
          "zstd cannot be read by bookworm's GRUB 2.06, which loads the kernel from the root slot; use xz or gzip",
      });
    }
    if (d.root.filesystem === "erofs") {
      ctx.addIssue({
        code: "custom",
        path: ["root", "filesystem"],
        message:
          "erofs cannot be read by bookworm's GRUB 2.06, which loads the kernel from the root slot; use squashfs",
      });
    }
  });

export type ImageDescription = z.infer<typeof imageDescriptionSchema>;

export function parseImageDescription(text: string, file: string): ImageDescription {
  return parseYamlConfig(text, file, imageDescriptionSchema);
}

/** Packages every EOS root needs to boot and update itself, whatever the description lists. */
export const REQUIRED_PACKAGES = [
  "systemd-sysv",
  "udev",
  "initramfs-tools",
  "linux-image-cloud-amd64",
  "kexec-tools",
  "dosfstools",
] as const;

export function packageList(desc: ImageDescription): string[] {
  const list = new Set<string>(REQUIRED_PACKAGES);
  if (desc.eos.node === "debian") list.add("nodejs");
  if (desc.users.root.ssh_authorized_keys.length > 0) list.add("openssh-server");
  for (const p of desc.packages) list.add(p);
  return [...list].sort();
}

/** A stable GUID derived from a seed: reproducible builds get the same partition UUIDs. */
export function stableGuid(seed: string): string {
  const h = createHash("sha256").update(seed).digest();
  h[6] = ((h[6] ?? 0) & 0x0f) | 0x40;
  h[8] = ((h[8] ?? 0) & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString("hex").toUpperCase();
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

export interface LayoutPart {
  label: string;
  /** GRUB's name for it on the boot disk (`gpt2`). */
  grubName: string;
  number: number;
  offset: number;
  size: number;
  uuid: string;
}

export interface DiskLayout {
  diskSize: number;
  table: GptTable;
  esp: LayoutPart;
  slotA: LayoutPart;
  slotB: LayoutPart | undefined;
  spare: LayoutPart;
}

const ALIGN = MiB;

/**
 * GPT layout: p.UEFI, p.lxreadonly, p.lxrootclone1 (profile AB), p.spare
 * last. Partitions are MiB-aligned; the disk ends 1 MiB after the spare
 * partition (room for the backup GPT). GUIDs derive from the image name so
 * two builds of the same description are byte-identical.
 */
export function planLayout(desc: ImageDescription, profile: Profile): DiskLayout {
  const sectorSize = 512;
  const specs: Array<{ label: string; size: number; type: string }> = [
    { label: FIRMWARE_LABEL, size: desc.partitions.esp, type: PartitionType.efiSystem },
    { label: ROOT_LABEL, size: desc.partitions.root, type: PartitionType.linuxRootX86_64 },
  ];
  if (profile === "AB") {
    specs.push({ label: ROOT_CLONE_LABEL, size: desc.partitions.root, type: PartitionType.linuxRootX86_64 });
  }
  specs.push({ label: REGISTRY_LABEL, size: desc.partitions.spare, type: PartitionType.linuxData });
  let offset = ALIGN;
  const parts: LayoutPart[] = specs.map((spec, i) => {
    const part: LayoutPart = {
      label: spec.label,
      grubName: `gpt${i + 1}`,
      number: i + 1,
      offset,
      size: spec.size,
      uuid: stableGuid(`eos:${desc.name}:partition:${spec.label}`),
    };
    offset += spec.size;
    return part;
  });
  const diskSize = offset + ALIGN;
  const { firstUsableLba, lastUsableLba } = usableRange(diskSize, sectorSize);
  const table: GptTable = {
    sectorSize,
    diskGuid: stableGuid(`eos:${desc.name}:disk`),
    firstUsableLba,
    lastUsableLba,
    entryCount: 128,
    entrySize: 128,
    partitions: parts.map((p, i) => ({
      number: p.number,
      typeGuid: specs[i]?.type ?? PartitionType.linuxData,
      uniqueGuid: p.uuid,
      firstLba: p.offset / sectorSize,
      lastLba: (p.offset + p.size) / sectorSize - 1,
      attributes: 0n,
      name: p.label,
    })),
  };
  const byLabel = (label: string) => parts.find((p) => p.label === label);
  const need = (label: string): LayoutPart => {
    const p = byLabel(label);
    if (!p) throw new EosError("INTERNAL", `layout lacks ${label}`);
    return p;
  };
  return {
    diskSize,
    table,
    esp: need(FIRMWARE_LABEL),
    slotA: need(ROOT_LABEL),
    slotB: byLabel(ROOT_CLONE_LABEL),
    spare: need(REGISTRY_LABEL),
  };
}

/** The kernel command line beyond what grub.cfg adds (root=, eos.slot=, panic=). */
export function baseCmdline(desc: ImageDescription): string {
  const words = [...desc.kernel.cmdline];
  if (!words.some((w) => w.startsWith("rootfstype="))) words.push(`rootfstype=${desc.root.filesystem}`);
  return words.join(" ");
}

export interface RootFile {
  path: string;
  mode: number;
  content: string;
}

function yamlString(value: string): string {
  return JSON.stringify(value);
}

const INITRAMFS_OVERLAY_HOOK = `#!/bin/sh
# EOS: the read-only root slot becomes the lower layer of an overlay whose
# upper layer is tmpfs, like overlayroot=tmpfs. The lower and upper mounts
# move under the new root (/run/eos/...), or run-init refuses to switch.
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in
prereqs) prereqs; exit 0 ;;
esac
. /scripts/functions
grep -qw eos.overlay=off /proc/cmdline && exit 0
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
`;

const UPDATE_COMMIT_SERVICE = `[Unit]
Description=EOS: commit the slot this update booted into
Documentation=file:///usr/share/doc/eos/boot-control.md
After=multi-user.target
ConditionKernelCommandLine=COMMIT_UPDATE
RequiresMountsFor=/boot/efi

[Service]
Type=oneshot
ExecStart=/usr/bin/os-update --commit
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
`;

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
    /** The unit as os-update ships it; the builder's own when undefined. */
    updateCommitUnit?: string | undefined;
  },
): RootFile[] {
  const files: RootFile[] = [];
  const add = (path: string, content: string, mode = 0o644) => files.push({ path, mode, content });
  const modules = ["squashfs", "overlay", ...desc.kernel.modules];
  add(
    "/etc/initramfs-tools/modules",
    `# EOS: the root slot is ${desc.root.filesystem}, the running root an overlay\n${[...new Set(modules)].join("\n")}\n`,
  );
  add("/etc/initramfs-tools/scripts/init-bottom/eos-overlay", INITRAMFS_OVERLAY_HOOK, 0o755);
  add(
    "/etc/fstab",
    "# EOS: / is an overlay of the read-only root slot and tmpfs (set up in the initramfs)\n" +
      "PARTLABEL=p.UEFI /boot/efi vfat umask=0077,nofail,x-systemd.device-timeout=30s 0 0\n",
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
  add("/usr/lib/systemd/system/update_commit.service", options.updateCommitUnit ?? UPDATE_COMMIT_SERVICE);
  add("/etc/eos/image", `NAME=${desc.name}\nVERSION=${desc.version}\n`);

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

  // The EOS commands: node bundles behind small wrappers in /usr/bin.
  if (options.nodePath) {
    for (const name of options.commands) {
      add(`/usr/bin/${name}`, `#!/bin/sh\nexec ${options.nodePath} /usr/lib/eos/${name}.mjs "$@"\n`, 0o755);
    }
  }

  const keys = desc.users.root.ssh_authorized_keys;
  if (keys.length > 0) {
    add("/root/.ssh/authorized_keys", `${keys.join("\n")}\n`, 0o600);
    // Host keys are made at boot (in the tmpfs overlay): an image never ships them.
    add(
      "/etc/systemd/system/ssh.service.d/eos-host-keys.conf",
      "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n",
    );
  }
  if (desc.users.root.autologin_serial) {
    add(
      "/etc/systemd/system/serial-getty@ttyS0.service.d/eos-autologin.conf",
      "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM\n",
    );
  }
  return files;
}
