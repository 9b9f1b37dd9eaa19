/**
 * bench/verity: what dm-verity on the root slot costs.
 *
 *   node --import tsx bench/verity.ts [--rounds N] [--json]
 *
 * Boots the vm tier's test image (test/helpers/vm-image.ts) twice, on copies
 * of the same disk, interleaved in the same run:
 *   verity    as built: GRUB passes eos.verity=, the root is /dev/mapper/eos-root
 *   baseline  the same disk with eos_A_verity cleared in grubenv, so the
 *             initramfs mounts the slot directly (the image without the check)
 * and prints, for each, the time from the kernel's start to multi-user.target
 * (systemd's own monotonic timestamp) and, in the verity boot, cold sequential
 * reads of the whole file system area (caches dropped before each read)
 * through the mapping and straight from the partition: MiB/s and the ratio.
 * QEMU runs with KVM when /dev/kvm is usable, TCG otherwise (as the vm tier).
 */
import { mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { copyImage, editImageGrubenv, readImageGrubenv, startTestVm } from "../test/helpers/vm.ts";
import { testImage, vmSkipReason, VM_TMP } from "../test/helpers/vm-image.ts";
import { parseVerityParameter } from "../src/core/verity.ts";

const roundsArg = process.argv.indexOf("--rounds");
const ROUNDS = roundsArg > 0 ? Number(process.argv[roundsArg + 1]) : 3;
const JSON_OUT = process.argv.includes("--json");

const skip = vmSkipReason();
if (skip) {
  console.log(`bench/verity: skipped: ${skip}`);
  process.exit(0);
}

function median(values: number[]): number {
  const v = [...values].sort((a, b) => a - b);
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? (v[mid] ?? 0) : ((v[mid - 1] ?? 0) + (v[mid] ?? 0)) / 2;
}

const image = await testImage({ version: "1.0.0-test" });
const parameter = (await readImageGrubenv(image.raw)).get("eos_A_verity") ?? "";
const verity = parseVerityParameter(parameter);
if (!verity) {
  console.log(
    `bench/verity: ${image.raw} has no dm-verity record (eos_A_verity=${JSON.stringify(parameter)})`,
  );
  process.exit(1);
}
const dir = await mkdtemp(join(VM_TMP, "bench-verity-"));
const withTree = await copyImage(image.raw, dir, "verity.raw");
const without = await copyImage(image.raw, dir, "plain.raw");
await editImageGrubenv(without, { eos_A_verity: "" });

const boot: Record<"verity" | "baseline", number[]> = { verity: [], baseline: [] };
const read: Record<"mapped" | "partition", number[]> = { mapped: [], partition: [] };
const mib = (verity.data_blocks * 4096) / 2 ** 20;
try {
  for (let round = 0; round < ROUNDS; round++) {
    for (const kind of ["verity", "baseline"] as const) {
      const vm = await startTestVm(undefined, image, {
        raw: kind === "verity" ? withTree : without,
        workDir: join(dir, `${kind}-${round}`),
      });
      try {
        await vm.waitForSsh({ timeoutMs: 10 * 60_000 });
        const us = await vm.sshOk([
          "systemctl",
          "show",
          "-P",
          "ActiveEnterTimestampMonotonic",
          "multi-user.target",
        ]);
        boot[kind].push(Number(us) / 1e6);
        const source = (await vm.sshOk(["findmnt", "-n", "-o", "SOURCE", "/media/root-ro"])).trim();
        const slotA = (await vm.sshOk(["readlink", "-f", "/dev/disk/by-partlabel/p.lxreadonly"])).trim();
        const expected = kind === "verity" ? "/dev/mapper/eos-root" : slotA;
        if (source !== expected) throw new Error(`${kind} boot: the root is ${source}, not ${expected}`);
        if (kind === "verity") {
          for (const [what, device] of [
            ["mapped", "/dev/mapper/eos-root"],
            ["partition", slotA],
          ] as const) {
            const script = `sync; echo 3 > /proc/sys/vm/drop_caches; s=$(date +%s%N); dd if=${device} of=/dev/null bs=1M count=${Math.floor(mib)} iflag=direct status=none; e=$(date +%s%N); echo $(( (e - s) / 1000000 ))`;
            const ms = Number((await vm.sshOk(["sh", "-c", script])).trim());
            read[what].push(Math.floor(mib) / (ms / 1000));
          }
        }
      } finally {
        await vm.kill();
      }
    }
  }
  const result = {
    rounds: ROUNDS,
    fs_mib: Number(mib.toFixed(1)),
    boot_to_multi_user_s: { verity: median(boot.verity), baseline: median(boot.baseline) },
    boot_ratio: median(boot.verity) / median(boot.baseline),
    cold_read_mib_s: { mapped: median(read.mapped), partition: median(read.partition) },
    read_ratio: median(read.mapped) / median(read.partition),
  };
  if (JSON_OUT) console.log(JSON.stringify(result, null, 2));
  else {
    console.log(`bench/verity: ${ROUNDS} rounds, ${result.fs_mib} MiB file system, medians`);
    console.log(
      `  boot to multi-user.target  verity ${result.boot_to_multi_user_s.verity.toFixed(1)} s   baseline (no tree) ${result.boot_to_multi_user_s.baseline.toFixed(1)} s   ratio ${result.boot_ratio.toFixed(2)}`,
    );
    console.log(
      `  cold sequential read       through dm-verity ${result.cold_read_mib_s.mapped.toFixed(0)} MiB/s   partition ${result.cold_read_mib_s.partition.toFixed(0)} MiB/s   ratio ${result.read_ratio.toFixed(2)}`,
    );
  }
} finally {
  await rm(dir, { recursive: true, force: true });
}
