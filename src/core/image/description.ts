/**
 * The image description read by `eos build`: a YAML file a person can read
 * and edit (packages, overlay files, services, users, partition sizes, root
 * file system), validated here with errors naming the file and the key.
 */
import { z } from "zod";
import { parseYamlConfig } from "../config.ts";
import { isSafeImageName } from "../image-name.ts";
import { ARCH_PROFILES, type Architecture } from "./arch.ts";

/**
 * AB: two root slots; Static: slot A only; EC2: AB plus what an EC2 AMI needs
 * (src/core/image/ec2.ts); RPI: AB plus the Raspberry Pi 4's boot chain (src/core/image/rpi.ts).
 */
export const PROFILES = ["AB", "Static", "EC2", "RPI"] as const;
export type Profile = (typeof PROFILES)[number];

/** Whether a profile's disk has slot B (p.lxrootclone1) and so updates A/B. */
export function hasSlotB(profile: Profile): boolean {
  return profile !== "Static";
}

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

/**
 * When the image's files say they were made (SOURCE_DATE_EPOCH): seconds since
 * 1970, or a date (YYYY-MM-DD, or an ISO time in UTC).
 */
const epoch = z.union([z.number(), z.string()]).transform((value, ctx) => {
  const seconds =
    typeof value === "number"
      ? value
      : /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}Z)?$/.test(value)
        ? Date.parse(value.length === 10 ? `${value}T00:00:00Z` : value) / 1000
        : Number.NaN;
  if (!Number.isSafeInteger(seconds) || seconds <= 0) {
    ctx.addIssue({ code: "custom", message: "must be seconds since 1970 or a date like 2026-11-01" });
    return z.NEVER;
  }
  return seconds;
});

/**
 * Without an `epoch`, a build still does not take the clock: it dates its files
 * at the suite's release, so two builds of one description are the same bytes.
 */
export const SUITE_EPOCH = {
  bookworm: Date.UTC(2023, 5, 10) / 1000,
  trixie: Date.UTC(2025, 7, 9) / 1000,
} as const;

export const SUITES = ["bookworm", "trixie"] as const;

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
    epoch: epoch.optional(),
    hostname: z
      .string()
      .regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, "must be a host name (lowercase letters, digits, -)")
      .default("eos"),
    distribution: z
      .strictObject({
        suite: z.enum(SUITES).default("bookworm"),
        mirror: z
          .string()
          .regex(/^(https?|file):\/\/[^\s]+$/, "must be an http://, https:// or file:// URL")
          .default("http://deb.debian.org/debian"),
        components: z.array(z.enum(["main", "contrib", "non-free", "non-free-firmware"])).default(["main"]),
      })
      .prefault({}),
    packages: z.array(packageName).default([]),
    files: z.array(localPath).default([]),
    /**
     * Container images built into the root's read-only store (the seed's
     * split registry): from Debian packages (minbase + packages) or from an
     * OCI archive file (podman save --format oci-archive).
     */
    containers: z
      .array(
        z
          .strictObject({
            name: z
              .string()
              .regex(
                /^[a-z0-9][a-z0-9._-]{0,62}$/,
                "must be a container name: lowercase letters, digits and . _ - (at most 63)",
              ),
            packages: z.array(packageName).optional(),
            archive: localPath.optional(),
            cmd: z.array(z.string().min(1)).default(["/bin/bash"]),
          })
          .refine(
            (c) => (c.packages === undefined) !== (c.archive === undefined),
            "give either packages (built with mmdebstrap) or archive (an OCI archive file), not both",
          ),
      )
      .default([])
      .refine(
        (list) => new Set(list.map((c) => c.name)).size === list.length,
        "container names must be unique",
      ),
    /**
     * The seed's `fleet` container and flake (src/core/image/fleet.ts): the
     * credentials under /usr/share/eos/fleet/ (from files:) as one layer on
     * `base`, a container above built from packages.
     */
    fleet: z.strictObject({ base: z.string() }).optional(),
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
        /** dm-verity over the slot: every block the kernel reads is checked against the signed root hash. */
        verity: z.boolean().default(true),
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
        /**
         * host: the build machine's node binary (only for an image of the build
         * machine's architecture); debian: bookworm's nodejs (Node 18); none.
         */
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
        /**
         * Public keys of the update server's assignment key (PEM files, relative to the
         * description): with them the device accepts a signed downgrade (a rollout's abort, a pin).
         */
        assignment_keys: z.array(localPath).default([]),
        token: z
          .string()
          .regex(/^[A-Za-z0-9._~+/=-]{1,512}$/, "must be a token of letters, digits and . _ ~ + / = -")
          .optional(),
        tries: z.number().int().min(1).max(9).optional(),
      })
      .prefault({}),
  })
  .superRefine((d, ctx) => {
    if (d.fleet) {
      const base = d.containers.find((c) => c.name === d.fleet?.base);
      if (!base?.packages)
        ctx.addIssue({
          code: "custom",
          path: ["fleet", "base"],
          message: `must name a container of containers: built from packages (the fleet layer goes on its layer)`,
        });
      if (d.containers.some((c) => c.name === "fleet"))
        ctx.addIssue({
          code: "custom",
          path: ["containers"],
          message: "the name fleet is the fleet container's (fleet:); give this container another name",
        });
    }
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

/**
 * Packages every EOS root needs to boot and update itself, whatever the
 * description lists; the kernel comes from the architecture (src/core/image/arch.ts).
 */
export const REQUIRED_PACKAGES = [
  "systemd-sysv",
  "udev",
  "initramfs-tools",
  "kexec-tools",
  "dosfstools",
  // os-update's delta path decodes pair deltas against the running slot.
  "xdelta3",
  // os-update --firmware reads the new ESP image's files with mcopy (no loop mount needed).
  "mtools",
] as const;

export function packageList(desc: ImageDescription, architecture: Architecture = "x86_64"): string[] {
  const arch = ARCH_PROFILES[architecture];
  const list = new Set<string>([...REQUIRED_PACKAGES, arch.kernelPackage, ...arch.extraPackages]);
  if (desc.eos.node === "debian") list.add("nodejs");
  // veritysetup, which the initramfs opens the root slot with.
  if (desc.root.verity) list.add("cryptsetup-bin");
  if (desc.users.root.ssh_authorized_keys.length > 0) list.add("openssh-server");
  for (const p of desc.packages) list.add(p);
  return [...list].sort();
}

/** The kernel command line beyond what grub.cfg adds (root=, eos.slot=, panic=). */
export function baseCmdline(desc: ImageDescription): string {
  const words = [...desc.kernel.cmdline];
  if (!words.some((w) => w.startsWith("rootfstype="))) words.push(`rootfstype=${desc.root.filesystem}`);
  return words.join(" ");
}
