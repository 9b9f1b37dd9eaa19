/**
 * The flake registry's pure rules: names and sizes of the contract, what a
 * probe of a device means ("holds a file system, refuse"), the LUKS2 token
 * that records how the key is provided, and the GPT change that grows the
 * last partition (`p.spare`) to fill its disk.
 */
import { EosError } from "../errors.ts";
import { type GptTable } from "../gpt.ts";
import { usableRange } from "../gpt-write.ts";
import { REGISTRY_LABEL } from "../manifest.ts";

export { REGISTRY_LABEL };
/** dm-crypt mapping name (the original's). */
export const REGISTRY_MAPPER = "luksInstances";
/** XFS label of the opened registry (the original's). */
export const REGISTRY_FS_LABEL = "INSTANCE";

/**
 * LUKS2 label of a registry whose set-up has not finished: written by
 * luksFormat, cleared once the file system exists. A header that still
 * carries it was never mounted, so it holds no data and may be set up again.
 */
export const SETUP_INCOMPLETE_LABEL = "eos-setup-incomplete";

/** Whether a `blkid -p` probe shows a registry whose set-up was cut short. */
export function setupCutShort(vars: Map<string, string>): boolean {
  return vars.get("TYPE") === "crypto_LUKS" && vars.get("LABEL") === SETUP_INCOMPLETE_LABEL;
}
export const REGISTRY_MOUNT = "/var/lib/containers/storage";
/** Directories created on activation, relative to the mount point. */
export const REGISTRY_DIRS = ["flakes", "tmp/flakes", "firecracker"] as const;
export const LUKS2_HEADER_BYTES = 16 * 1024 * 1024;
/** mkfs.xfs (xfsprogs ≥ 5.19) refuses file systems under 300 MiB. */
export const XFS_MIN_BYTES = 300 * 1024 * 1024;
export const REGISTRY_MIN_BYTES = LUKS2_HEADER_BYTES + XFS_MIN_BYTES;
/** Bytes of random key material (a full-entropy key: pbkdf2 with few iterations is enough). */
export const KEY_BYTES = 64;
export const TOKEN_TPM2 = "eos-tpm2";
export const TOKEN_KEYFILE = "eos-keyfile";

export type KeyProviderName = "tpm2" | "keyfile";

/** What a LUKS2 token of ours records (JSON in the LUKS2 header; nothing secret). */
export type RegistryToken =
  { provider: "tpm2"; pub: string; priv: string; pcrs: number[] } | { provider: "keyfile" };

export function encodeToken(token: RegistryToken, keyslot: number): string {
  if (token.provider === "tpm2") {
    return JSON.stringify({
      type: TOKEN_TPM2,
      keyslots: [String(keyslot)],
      "eos-tpm2-pub": token.pub,
      "eos-tpm2-priv": token.priv,
      "eos-tpm2-pcrs": token.pcrs,
      "eos-tpm2-primary": "owner/ecc/sha256",
    });
  }
  return JSON.stringify({ type: TOKEN_KEYFILE, keyslots: [String(keyslot)] });
}

/** Reads one of our tokens from `cryptsetup token export` JSON; undefined for foreign tokens. */
export function decodeToken(json: string, where: string): RegistryToken | undefined {
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch {
    throw new EosError("REGISTRY", `${where}: LUKS2 token is not JSON`);
  }
  if (typeof v !== "object" || v === null)
    throw new EosError("REGISTRY", `${where}: LUKS2 token is not an object`);
  const o = v as Record<string, unknown>;
  if (o.type === TOKEN_KEYFILE) return { provider: "keyfile" };
  if (o.type !== TOKEN_TPM2) return undefined;
  const pub = o["eos-tpm2-pub"];
  const priv = o["eos-tpm2-priv"];
  const pcrs = o["eos-tpm2-pcrs"] ?? [];
  const b64 = /^[A-Za-z0-9+/]+={0,2}$/;
  if (typeof pub !== "string" || !b64.test(pub) || typeof priv !== "string" || !b64.test(priv)) {
    throw new EosError("REGISTRY", `${where}: ${TOKEN_TPM2} token lacks the sealed key (eos-tpm2-pub/priv)`);
  }
  if (!Array.isArray(pcrs) || !pcrs.every((p) => Number.isInteger(p) && p >= 0 && p <= 23)) {
    throw new EosError("REGISTRY", `${where}: ${TOKEN_TPM2} token has bad eos-tpm2-pcrs`);
  }
  return { provider: "tpm2", pub, priv, pcrs: pcrs as number[] };
}

/** `--pcrs 0,7` → [0, 7]; empty string → []. */
export function parsePcrs(text: string): number[] {
  if (text.trim() === "") return [];
  const out = text.split(",").map((s) => {
    const n = Number(s.trim());
    if (!/^\d{1,2}$/.test(s.trim()) || n > 23) {
      throw new EosError("USAGE", `--pcrs ${text}: expected PCR numbers 0-23 separated by commas`);
    }
    return n;
  });
  return [...new Set(out)].sort((a, b) => a - b);
}

/** `blkid -p -o export` output → its variables. */
export function parseBlkidExport(text: string): Map<string, string> {
  const vars = new Map<string, string>();
  for (const line of text.split("\n")) {
    const i = line.indexOf("=");
    if (i > 0) vars.set(line.slice(0, i), line.slice(i + 1));
  }
  return vars;
}

/** A person's description of what a probe found ("an xfs file system labelled INSTANCE"). */
export function describeSignature(vars: Map<string, string>): string | undefined {
  const type = vars.get("TYPE") ?? vars.get("PTTYPE");
  if (!type) return undefined;
  const label = vars.get("LABEL");
  const uuid = vars.get("UUID");
  const what =
    type === "crypto_LUKS"
      ? `a LUKS${vars.get("VERSION") ? vars.get("VERSION") : ""} header`
      : vars.has("PTTYPE") && !vars.has("TYPE")
        ? `a ${type} partition table`
        : `a ${type} ${vars.get("USAGE") === "raid" ? "RAID member" : "file system"}`;
  return `${what}${label ? ` labelled ${label}` : ""}${uuid ? ` (UUID ${uuid})` : ""}`;
}

export function checkRegistrySize(device: string, bytes: number): void {
  if (bytes < REGISTRY_MIN_BYTES) {
    const mib = (n: number) => `${(n / 1024 / 1024).toFixed(0)} MiB`;
    throw new EosError(
      "REGISTRY",
      `${device} is ${mib(bytes)}: the registry needs at least ${mib(REGISTRY_MIN_BYTES)} (LUKS2 header 16 MiB, XFS 300 MiB)`,
      { hint: "give the disk more room: the boot service grows p.spare to fill the disk" },
    );
  }
}

export interface GrowPlan {
  /** The table to write (backup header at the disk end, last partition to the usable end). */
  table: GptTable;
  partitionNumber: number;
  oldBytes: number;
  newBytes: number;
  /** Only the backup header moves (the partition already ends where it can). */
  headerOnly: boolean;
}

/**
 * Growing the last partition (it must be `label`) to the end of a disk of
 * `diskSize` bytes, keeping its start and a 1 MiB alignment of its end.
 * Undefined when there is nothing to do.
 */
export function planGrow(
  table: GptTable,
  diskSize: number,
  /** The backup header was found at the disk's last LBA. */
  backupAtEnd: boolean,
  label = REGISTRY_LABEL,
): GrowPlan | undefined {
  const sorted = [...table.partitions].sort((a, b) => a.firstLba - b.firstLba);
  const last = sorted[sorted.length - 1];
  if (!last || last.name !== label) {
    throw new EosError(
      "GPT",
      `the last partition is ${last ? last.name || `#${last.number}` : "missing"}, not ${label}`,
      {
        hint: "only the last partition can grow",
      },
    );
  }
  const ss = table.sectorSize;
  const { lastUsableLba } = usableRange(diskSize, ss, table.entryCount);
  const align = Math.max(1, (1024 * 1024) / ss);
  // End aligned down so that (lastLba + 1) is a multiple of 1 MiB.
  const alignedEnd = Math.floor((lastUsableLba + 1) / align) * align - 1;
  const newLast = Math.max(last.lastLba, alignedEnd);
  const headerMoves = !backupAtEnd || table.lastUsableLba !== lastUsableLba;
  if (newLast === last.lastLba && !headerMoves) return undefined;
  if (newLast < last.lastLba) return undefined;
  const partitions = table.partitions.map((p) => (p === last ? { ...p, lastLba: newLast } : p));
  return {
    table: { ...table, lastUsableLba, partitions },
    partitionNumber: last.number,
    oldBytes: (last.lastLba - last.firstLba + 1) * ss,
    newBytes: (newLast - last.firstLba + 1) * ss,
    headerOnly: newLast === last.lastLba,
  };
}

/** Mapper names and labels reach cryptsetup's argv: keep them plain. */
export function checkMapperName(name: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(name)) {
    throw new EosError("USAGE", `mapper name ${JSON.stringify(name)}: letters, digits and _ . - only`);
  }
  return name;
}

/** Where the boot service leaves its one-line outcome (tmpfs). */
export const REGISTRY_BOOT_REPORT = "/run/eos-registry/boot-report";
