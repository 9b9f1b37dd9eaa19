/**
 * Where everything goes on an EOS disk: the GPT with p.UEFI, the root slots
 * and p.spare, aligned, with partition GUIDs derived from the image's name
 * and version so that two builds of the same inputs are byte-identical.
 */
import { createHash } from "node:crypto";
import { EosError } from "../errors.ts";
import { FIRMWARE_LABEL, REGISTRY_LABEL, ROOT_CLONE_LABEL, ROOT_LABEL } from "../manifest.ts";
import { PartitionType, type GptTable } from "../gpt.ts";
import { usableRange } from "../gpt-write.ts";
import { ARCH_PROFILES, type Architecture } from "./arch.ts";
import { hasSlotB, type ImageDescription, type Profile } from "./description.ts";

const MiB = 1024 * 1024;

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
 * GPT layout: p.UEFI, p.lxreadonly, p.lxrootclone1 (profiles AB and EC2), p.spare
 * last; the slots carry the architecture's "Linux root" type. Partitions are MiB-aligned; the disk ends 1 MiB after the spare
 * partition (room for the backup GPT). GUIDs derive from the image name so
 * two builds of the same description are byte-identical.
 */
export function planLayout(
  desc: ImageDescription,
  profile: Profile,
  architecture: Architecture = "x86_64",
): DiskLayout {
  const sectorSize = 512;
  const rootType = ARCH_PROFILES[architecture].rootPartitionType;
  const specs: Array<{ label: string; size: number; type: string }> = [
    { label: FIRMWARE_LABEL, size: desc.partitions.esp, type: PartitionType.efiSystem },
    { label: ROOT_LABEL, size: desc.partitions.root, type: rootType },
  ];
  if (hasSlotB(profile)) {
    specs.push({ label: ROOT_CLONE_LABEL, size: desc.partitions.root, type: rootType });
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
