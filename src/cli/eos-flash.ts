/** `eos flash IMAGE DEVICE`: the safe replacement for the seed's `xz -d | dd of=/dev/sdX`. */
import type { Command } from "commander";
import type { Context } from "../io/context.ts";
import { flashImage } from "../io/image/flash.ts";
import { formatBytes } from "../io/progress.ts";

interface FlashOpts {
  yes?: boolean;
  force?: boolean;
  manifest?: string;
  pub?: string[];
  json?: boolean;
}

export function addFlashCommand(program: Command, ctx: Context): void {
  program
    .command("flash")
    .description(
      "write a disk image (raw, .xz, .zst, .gz) to a disk (an SD card or USB stick), then read it back to verify",
    )
    .argument("<image>", "disk image made by eos build, e.g. out/EOS.aarch64-RPI.raw.xz")
    .argument("<device>", "the whole disk to overwrite, e.g. /dev/sdb (see lsblk)")
    .option("--yes", "do not ask for confirmation (scripts)")
    .option(
      "--force",
      "write to a disk that does not say it is removable (never lifts: mounted, in use, running system, too small)",
    )
    .option("--manifest <file>", "the image's manifest (default: IMAGE.manifest.json beside the image)")
    .option("--pub <file...>", "release public key(s): also check the manifest's signature")
    .option("--json", "print the result as JSON")
    .action(async (image: string, device: string, opts: FlashOpts) => {
      const r = await flashImage(ctx, {
        image,
        device,
        yes: Boolean(opts.yes),
        force: Boolean(opts.force),
        ...(opts.manifest === undefined ? {} : { manifest: opts.manifest }),
        ...(opts.pub === undefined ? {} : { trusted: opts.pub }),
      });
      if (opts.json) {
        ctx.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
        return;
      }
      const m = r.manifest;
      ctx.stdout.write(
        [
          `flashed:   ${r.device} (${r.model}): ${formatBytes(r.bytes)} in ${r.seconds} s`,
          `read back: sha256 ${r.sha256} matches what was written`,
          m
            ? `manifest:  ${m.name} ${m.version}: ${m.partitions.join(", ")} match ${m.path}; signature ${m.signature}`
            : "manifest:  none beside the image (partitions not checked)",
          "",
        ].join("\n"),
      );
    });
}
