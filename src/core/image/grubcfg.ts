/**
 * grub.cfg, the early config embedded in BOOTX64.EFI and the first grubenv,
 * exactly as docs/boot-control.md describes them. GRUB 2.06 has no
 * arithmetic and no GPT label search: tries are decremented through a table
 * and slots are addressed by the partition names recorded in grubenv.
 */
import { EosError } from "../errors.ts";
import { encodeGrubenv } from "../update/grubenv.ts";
import { parseVerityParameter } from "../verity.ts";

export const MAX_TRIES = 9;
/** Boots of the committed slot that never confirmed (os-update --commit) before GRUB falls back. */
export const UNCONFIRMED_LIMIT = 3;

export interface BootSlots {
  /** GRUB partition names on the boot disk, e.g. gpt2 and gpt3; B is undefined for the Static profile. */
  aPart: string;
  aUuid: string;
  bPart: string | undefined;
  bUuid: string | undefined;
  /** The rest of the kernel command line (console=, rootfstype=, …). */
  cmdline: string;
  /** What slot A holds: the manifest's version, root hash and size, and its dm-verity parameter. */
  aRecord?: { version: string; sha256: string; size: number; verity?: string | undefined } | undefined;
  /** The disk's image and architecture, as its manifests name them (for a disk os-update acts on offline). */
  identity?: { image: string; architecture: string } | undefined;
}

const PART = /^gpt[0-9]{1,3}$/;
const UUID = /^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$/;

function check(slots: BootSlots): void {
  if (!PART.test(slots.aPart))
    throw new EosError("BOOT_CONTROL", `slot A partition ${slots.aPart} is not gptN`);
  if (!UUID.test(slots.aUuid))
    throw new EosError("BOOT_CONTROL", `slot A PARTUUID ${slots.aUuid} is not a GUID`);
  if ((slots.bPart === undefined) !== (slots.bUuid === undefined))
    throw new EosError("BOOT_CONTROL", "slot B needs both a partition name and a PARTUUID");
  if (slots.bPart !== undefined && !PART.test(slots.bPart))
    throw new EosError("BOOT_CONTROL", `slot B partition ${slots.bPart} is not gptN`);
  if (slots.bUuid !== undefined && !UUID.test(slots.bUuid))
    throw new EosError("BOOT_CONTROL", `slot B PARTUUID ${slots.bUuid} is not a GUID`);
  const r = slots.aRecord;
  if (
    r &&
    (!/^[0-9a-f]{64}$/.test(r.sha256) ||
      !Number.isSafeInteger(r.size) ||
      r.size <= 0 ||
      !/^[^\s\\]{1,64}$/.test(r.version))
  )
    throw new EosError("BOOT_CONTROL", "slot A record needs a version, a sha256 (64 hex digits) and a size");
  if (r?.verity !== undefined && !parseVerityParameter(r.verity))
    throw new EosError(
      "BOOT_CONTROL",
      `slot A verity parameter ${JSON.stringify(r.verity)} is not ROOT_HASH:BLOCKS`,
    );
  const id = slots.identity;
  if (
    id &&
    (!/^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/.test(id.image) || !/^[a-z0-9_]{1,32}$/.test(id.architecture))
  )
    throw new EosError("BOOT_CONTROL", "the image identity needs a safe image name and architecture");
  if (/["'\\$\n;{}]/.test(slots.cmdline))
    throw new EosError(
      "BOOT_CONTROL",
      `kernel command line ${JSON.stringify(slots.cmdline)} has characters GRUB would interpret`,
    );
}

/**
 * The environment block an image ships with: slot A committed, nothing on
 * trial; slot A's record (version, sha256, size: the manifest's root values),
 * slot B's record empty.
 */
export function initialGrubenv(slots: BootSlots): Buffer {
  check(slots);
  const vars = new Map<string, string>([
    ["eos_default", "A"],
    ["eos_trial", ""],
    ["eos_tries", "0"],
    ["eos_A_part", slots.aPart],
    ["eos_A_uuid", slots.aUuid.toLowerCase()],
    ["eos_cmdline", slots.cmdline],
  ]);
  if (slots.aRecord) {
    vars.set("eos_A_version", slots.aRecord.version);
    vars.set("eos_A_sha256", slots.aRecord.sha256);
    vars.set("eos_A_size", String(slots.aRecord.size));
    vars.set("eos_A_verity", slots.aRecord.verity ?? "");
  }
  if (slots.identity) {
    vars.set("eos_image", slots.identity.image);
    vars.set("eos_arch", slots.identity.architecture);
  }
  if (slots.bPart !== undefined && slots.bUuid !== undefined) {
    vars.set("eos_B_part", slots.bPart);
    vars.set("eos_B_uuid", slots.bUuid.toLowerCase());
    vars.set("eos_B_version", "");
    vars.set("eos_B_sha256", "");
    vars.set("eos_B_size", "");
    vars.set("eos_B_verity", "");
  }
  return encodeGrubenv(vars);
}

/**
 * Embedded in BOOTX64.EFI (or BOOTAA64.EFI) with `grub-mkimage -c`. GRUB 2.06
 * sets `$cmdpath` to the directory it was loaded from (the ESP's /EFI/BOOT),
 * so this works whatever the disk's number is. Debian's GRUB 2.12 (trixie's
 * grub-efi-arm64-bin) leaves `$cmdpath` unset and sets `$fw_path` instead: an
 * empty prefix there loaded no grubenv and booted nothing. `fwPath` makes the
 * config take either; without it the bytes stay those of every image built
 * before (x86_64's host GRUB, bookworm's arm64 GRUB).
 */
export function earlyGrubCfg(options: { fwPath?: boolean } = {}): string {
  if (!options.fwPath) return ["set prefix=$cmdpath", 'configfile "${prefix}/grub.cfg"', ""].join("\n");
  return [
    'if [ -n "${cmdpath}" ]; then',
    '  set prefix="${cmdpath}"',
    'elif [ -n "${fw_path}" ]; then',
    '  set prefix="${fw_path}"',
    "fi",
    'configfile "${prefix}/grub.cfg"',
    "",
  ].join("\n");
}

function verityArgs(target: string, record: string): string[] {
  return [`set ${target}=`, `if [ -n "\${${record}}" ]; then set ${target}="eos.verity=\${${record}}"; fi`];
}

function decrementTable(): string[] {
  const lines: string[] = [];
  for (let n = MAX_TRIES; n >= 1; n--) {
    const head = n === MAX_TRIES ? "if" : "elif";
    lines.push(`    ${head} [ "\${eos_tries}" = "${n}" ]; then`, `      set eos_tries=${n - 1}`);
  }
  lines.push("    else", "      set eos_tries=invalid", "    fi");
  return lines;
}

function unconfirmedTable(): string[] {
  const lines: string[] = [];
  for (let n = UNCONFIRMED_LIMIT - 1; n >= 1; n--) {
    const head = n === UNCONFIRMED_LIMIT - 1 ? "if" : "elif";
    lines.push(`    ${head} [ "\${eos_unconfirmed}" = "${n}" ]; then`, `      set eos_unconfirmed=${n + 1}`);
  }
  lines.push("    else", "      set eos_unconfirmed=1", "    fi");
  return lines;
}

/** The boot-counting grub.cfg (docs/boot-control.md, "GRUB logic"). */
export function generateGrubCfg(options: { timeout?: number } = {}): string {
  const timeout = options.timeout ?? 1;
  if (!Number.isInteger(timeout) || timeout < 0 || timeout > 60)
    throw new EosError("BOOT_CONTROL", `GRUB timeout ${timeout} must be 0..60 seconds`);
  const L: string[] = [
    "# EOS boot control: generated by eos build; the contract is docs/boot-control.md.",
    "# grubenv: eos_default (A|B), eos_trial (A|B|empty), eos_tries (0..9),",
    "# eos_A_part/eos_B_part (gptN), eos_A_uuid/eos_B_uuid (PARTUUID), eos_cmdline.",
    "set eos_env=${prefix}/grubenv",
    'load_env -f "${eos_env}"',
    "",
    "# The boot disk is the one GRUB was loaded from: $root is e.g. hd0,gpt1.",
    'regexp --set=1:eos_disk "^([^,]+)," "${root}"',
    'if [ -z "${eos_disk}" ]; then',
    "  set eos_disk=hd0",
    "fi",
    "",
    "# The committed slot; anything but B (or a B that this disk lacks) means A.",
    'if [ "${eos_default}" != "B" -o -z "${eos_B_part}" ]; then',
    "  set eos_default=A",
    "fi",
    "set eos_boot=${eos_default}",
    "set eos_commit=",
    "",
    "# A slot on trial: count one try and boot it with COMMIT_UPDATE; when no",
    "# tries are left, give up on it and boot the committed slot.",
    'if [ -n "${eos_trial}" ]; then',
    '  if [ "${eos_trial}" != "A" -a "${eos_trial}" != "B" ]; then',
    "    set eos_tries=0",
    '  elif [ "${eos_trial}" = "B" -a -z "${eos_B_part}" ]; then',
    "    set eos_tries=0",
    "  fi",
    '  if [ "${eos_tries}" = "0" -o -z "${eos_tries}" ]; then',
    "    set eos_trial=",
    "    set eos_tries=0",
    '    save_env -f "${eos_env}" eos_trial eos_tries',
    "  else",
    ...decrementTable(),
    '    if [ "${eos_tries}" = "invalid" ]; then',
    "      set eos_trial=",
    "      set eos_tries=0",
    '      save_env -f "${eos_env}" eos_trial eos_tries',
    "    else",
    '      save_env -f "${eos_env}" eos_tries',
    "      set eos_boot=${eos_trial}",
    "      set eos_commit=COMMIT_UPDATE",
    "    fi",
    "  fi",
    "fi",
    "",
    "# The committed slot confirms each boot once the system is up (os-update",
    `# --commit). A slot that did not come up in ${UNCONFIRMED_LIMIT} boots (a root that fails its`,
    "# dm-verity check panics, and panic=10 resets the machine) gives way to the",
    "# other slot, if that one holds a verified system.",
    'if [ -z "${eos_commit}" ]; then',
    `  if [ "\${eos_unconfirmed}" = "${UNCONFIRMED_LIMIT}" ]; then`,
    "    set eos_fallback=",
    '    if [ "${eos_default}" = "A" -a -n "${eos_B_part}" -a -n "${eos_B_sha256}" ]; then',
    "      set eos_fallback=B",
    '    elif [ "${eos_default}" = "B" -a -n "${eos_A_sha256}" ]; then',
    "      set eos_fallback=A",
    "    fi",
    '    if [ -n "${eos_fallback}" ]; then',
    `      echo "EOS: slot \${eos_default} did not come up in ${UNCONFIRMED_LIMIT} boots: falling back to slot \${eos_fallback}"`,
    "      set eos_default=${eos_fallback}",
    "      set eos_boot=${eos_fallback}",
    "      set eos_unconfirmed=1",
    '      save_env -f "${eos_env}" eos_default eos_unconfirmed',
    "    else",
    `      echo "EOS: slot \${eos_default} did not come up in ${UNCONFIRMED_LIMIT} boots and no other slot holds a verified system"`,
    "    fi",
    "  else",
    ...unconfirmedTable(),
    '    save_env -f "${eos_env}" eos_unconfirmed',
    "  fi",
    "fi",
    "",
    'if [ "${eos_boot}" = "B" ]; then',
    "  set eos_part=${eos_B_part}",
    "  set eos_uuid=${eos_B_uuid}",
    "  set eos_verity=${eos_B_verity}",
    "else",
    "  set eos_part=${eos_A_part}",
    "  set eos_uuid=${eos_A_uuid}",
    "  set eos_verity=${eos_A_verity}",
    "fi",
    'if [ "${eos_default}" = "B" ]; then',
    "  set eos_dpart=${eos_B_part}",
    "  set eos_duuid=${eos_B_uuid}",
    "  set eos_dverity=${eos_B_verity}",
    "else",
    "  set eos_dpart=${eos_A_part}",
    "  set eos_duuid=${eos_A_uuid}",
    "  set eos_dverity=${eos_A_verity}",
    "fi",
    "# A slot with a dm-verity record boots with its root hash on the command line.",
    ...verityArgs("eos_vargs", "eos_verity"),
    ...verityArgs("eos_dvargs", "eos_dverity"),
    ...verityArgs("eos_A_vargs", "eos_A_verity"),
    ...verityArgs("eos_B_vargs", "eos_B_verity"),
    "export eos_boot eos_part eos_uuid eos_commit eos_default eos_dpart eos_duuid eos_cmdline",
    "export eos_disk eos_A_part eos_A_uuid eos_B_part eos_B_uuid",
    "export eos_vargs eos_dvargs eos_A_vargs eos_B_vargs",
    "",
    "# Entry 0 boots the chosen slot; if GRUB cannot even load its kernel, the",
    "# fallback entry boots the committed slot.",
    "set default=0",
    "set fallback=1",
    `set timeout=${timeout}`,
    "set timeout_style=countdown",
    "",
    'menuentry "EOS slot ${eos_boot} ${eos_commit}" {',
    '  echo "EOS: booting slot ${eos_boot} (${eos_disk},${eos_part}) ${eos_commit}"',
    "  linux (${eos_disk},${eos_part})/boot/vmlinuz root=PARTUUID=${eos_uuid} eos.slot=${eos_boot} panic=10 ${eos_vargs} ${eos_cmdline} ${eos_commit}",
    "  initrd (${eos_disk},${eos_part})/boot/initrd.img",
    "}",
    'menuentry "EOS committed slot ${eos_default}" {',
    '  echo "EOS: booting committed slot ${eos_default} (${eos_disk},${eos_dpart})"',
    "  linux (${eos_disk},${eos_dpart})/boot/vmlinuz root=PARTUUID=${eos_duuid} eos.slot=${eos_default} panic=10 ${eos_dvargs} ${eos_cmdline}",
    "  initrd (${eos_disk},${eos_dpart})/boot/initrd.img",
    "}",
    'menuentry "EOS slot A" {',
    "  linux (${eos_disk},${eos_A_part})/boot/vmlinuz root=PARTUUID=${eos_A_uuid} eos.slot=A panic=10 ${eos_A_vargs} ${eos_cmdline}",
    "  initrd (${eos_disk},${eos_A_part})/boot/initrd.img",
    "}",
    'if [ -n "${eos_B_part}" ]; then',
    '  menuentry "EOS slot B" {',
    "    linux (${eos_disk},${eos_B_part})/boot/vmlinuz root=PARTUUID=${eos_B_uuid} eos.slot=B panic=10 ${eos_B_vargs} ${eos_cmdline}",
    "    initrd (${eos_disk},${eos_B_part})/boot/initrd.img",
    "  }",
    "fi",
    "",
  ];
  return L.join("\n");
}
