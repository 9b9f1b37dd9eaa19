/**
 * Runs inside a guest (bundled by test/helpers/esp-durability.ts): is the
 * boot control block on disk, whole and consistent, the moment
 * writeBootControl returns? A power cut may come at any instant after that.
 *
 * The ESP under test is a FAT file system on a loop device. Its backing file
 * holds exactly what vfat has sent to the device (the loop driver writes it
 * there); what vfat still holds dirty in its own buffers is not in it. So a
 * copy of the backing file taken right after a write is what a power cut at
 * that instant would leave on the disk.
 *
 * Usage: node probe.mjs WORKDIR ROUNDS. Prints one JSON line per round and
 * exits 0; the test judges the lines. The dirty flag that any cut of a mounted
 * FAT leaves is not counted (test/helpers/fat.ts).
 */
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { writeBootControl } from "../../src/io/update/boot-control.ts";
import { decodeGrubenv, encodeGrubenv } from "../../src/core/update/grubenv.ts";
import { fsckFat } from "./fat.ts";

function run(argv: string[]): { code: number; out: string } {
  const r = spawnSync(argv[0] as string, argv.slice(1), { encoding: "utf8" });
  return { code: r.status ?? 255, out: `${r.stdout ?? ""}${r.stderr ?? ""}` };
}

function must(argv: string[]): string {
  const r = run(argv);
  if (r.code !== 0) throw new Error(`${argv.join(" ")}: ${r.out}`);
  return r.out.trim();
}

/** The grubenv a copy of the backing file holds, read through a read-only mount of the copy. */
function grubenvOf(snapshot: string, mnt: string): string {
  const loop = must(["losetup", "--show", "-f", "-r", snapshot]);
  try {
    const m = run(["mount", "-t", "vfat", "-o", "ro", loop, mnt]);
    if (m.code !== 0) return `unmountable: ${m.out.trim()}`;
    try {
      return decodeGrubenv(readFileSync(join(mnt, "EFI/BOOT/grubenv")), "snapshot").get("eos_tries") ?? "";
    } catch (error) {
      return `unreadable: ${(error as Error).message}`;
    } finally {
      must(["umount", mnt]);
    }
  } finally {
    must(["losetup", "-d", loop]);
  }
}

async function main(): Promise<void> {
  const [work, roundsArg] = process.argv.slice(2);
  if (!work) throw new Error("usage: probe WORKDIR ROUNDS");
  const rounds = Number(roundsArg ?? "8");
  const backing = join(work, "esp.img");
  const snapshot = join(work, "snapshot.img");
  const esp = join(work, "esp");
  const snapMnt = join(work, "snap");
  mkdirSync(esp, { recursive: true });
  mkdirSync(snapMnt, { recursive: true });
  // As eos build makes the ESP (64 MiB: FAT16).
  must(["mkfs.fat", "-C", "-n", "EOS-ESP", backing, "65536"]);
  const loop = must(["losetup", "--show", "-f", backing]);
  must(["mount", "-t", "vfat", "-o", "umask=0077", loop, esp]);
  try {
    mkdirSync(join(esp, "EFI/BOOT"), { recursive: true });
    // Files beside grubenv, as on a real ESP, so that clusters get reused.
    writeFileSync(join(esp, "EFI/BOOT/grub.cfg"), "# grub.cfg\n".repeat(400));
    const vars = new Map([
      ["eos_default", "A"],
      ["eos_tries", "init"],
    ]);
    writeFileSync(join(esp, "EFI/BOOT/grubenv"), encodeGrubenv(vars));
    must(["sync"]);
    for (let round = 0; round < rounds; round++) {
      vars.set("eos_tries", String(round));
      await writeBootControl(esp, vars);
      copyFileSync(backing, snapshot);
      const fsck = fsckFat(snapshot);
      process.stdout.write(
        `${JSON.stringify({
          round,
          wrote: String(round),
          onDisk: grubenvOf(snapshot, snapMnt),
          fsckClean: fsck.clean,
          fsck: fsck.clean ? "" : fsck.report.split("\n").slice(1, 5).join(" | "),
        })}\n`,
      );
    }
  } finally {
    must(["umount", esp]);
    must(["losetup", "-d", loop]);
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`probe: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
