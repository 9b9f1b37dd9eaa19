/**
 * In which order --firmware switches the ESP's files in. Each rename is
 * durable on its own, so a power cut between two of them boots a mix of old
 * and new files; the order keeps every such mix bootable where it can. On the
 * Raspberry Pi the ESP's files outside EFI/ are its boot chain, and
 * config.txt names the others (kernel=u-boot.bin, dtoverlay=…, device_tree=…):
 * it is switched last, once everything the new one may name is in place, and
 * files the ESP does not have yet come first. The GPU firmware and its
 * memory-layout file (start*.elf, fixup*.dat) must match each other: they are
 * switched back to back, so only a cut between those two renames mixes them.
 */

/** start4.elf ↔ fixup4.dat, start.elf ↔ fixup.dat, start_cd.elf ↔ fixup_cd.dat, … (one key per pair). */
function gpuPair(path: string): string | undefined {
  const m = /^(start|fixup)(\w*)\.(elf|dat)$/i.exec(path);
  return m ? (m[2] as string).toLowerCase() : undefined;
}

function rank(path: string, present: ReadonlySet<string>): number {
  if (path.toLowerCase() === "config.txt") return 3;
  if (gpuPair(path) !== undefined) return 2;
  return present.has(path) ? 1 : 0;
}

/** `incoming` (paths relative to the ESP) in switching order; `present`: what the ESP holds now. */
export function firmwareSwitchOrder(incoming: readonly string[], present: ReadonlySet<string>): string[] {
  const key = (path: string) => `${gpuPair(path) ?? ""}\u0000${path}`;
  return [...incoming].sort((a, b) => {
    const byRank = rank(a, present) - rank(b, present);
    if (byRank !== 0) return byRank;
    const ka = key(a);
    const kb = key(b);
    return ka < kb ? -1 : ka > kb ? 1 : 0;
  });
}
