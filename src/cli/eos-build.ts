/** `eos build DESCRIPTION.yaml --profile AB|Static --out DIR [--key KEY]`: a bootable A/B disk image. */
import type { Command } from "commander";
import { PROFILES, type Profile } from "../core/image/description.ts";
import type { Context } from "../io/context.ts";
import { buildImage } from "../io/image/build.ts";
import { formatBytes } from "../io/progress.ts";
import { usageError } from "./main.ts";

export interface BuildCommandDeps {
  writeManifest: (raw: string, keys: string[], name: string, version: string) => Promise<string>;
}

export function registerBuild(program: Command, ctx: Context, deps: BuildCommandDeps): void {
  program
    .command("build")
    .description(
      "build a bootable GPT disk image (NAME.raw, NAME.raw.xz, signed manifest) from an image description",
    )
    .argument("<description>", "image description (YAML), e.g. images/default.yaml")
    .option("--profile <profile>", "AB (two root slots) or Static (slot A only)", "AB")
    .option("--out <dir>", "output directory", "out")
    .option(
      "--key <file...>",
      "release private key(s): sign the manifest; their public keys are trusted in the image",
    )
    .option("--version <version>", "image version (overrides the description's)")
    .option("--dist <dir>", "directory with the EOS command bundles (default: this checkout's dist/)")
    .option("--work <dir>", "scratch directory (default: OUT/.work-NAME)")
    .option("--keep-work", "keep the root tree and partition images")
    .option("--no-xz", "skip NAME.raw.xz")
    .option("--json", "print the build result as JSON")
    .action(
      async (
        description: string,
        opts: {
          profile: string;
          out: string;
          key?: string[];
          version?: string;
          dist?: string;
          work?: string;
          keepWork?: boolean;
          xz: boolean;
          json?: boolean;
        },
      ) => {
        if (!(PROFILES as readonly string[]).includes(opts.profile))
          throw usageError(`--profile ${opts.profile}: must be one of ${PROFILES.join(", ")}`);
        const result = await buildImage(ctx, {
          description,
          profile: opts.profile as Profile,
          outDir: opts.out,
          keys: opts.key ?? [],
          noXz: !opts.xz,
          keepWork: Boolean(opts.keepWork),
          writeManifest: deps.writeManifest,
          ...(opts.version === undefined ? {} : { version: opts.version }),
          ...(opts.dist === undefined ? {} : { distDir: opts.dist }),
          ...(opts.work === undefined ? {} : { workDir: opts.work }),
        });
        if (opts.json) {
          ctx.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
          return;
        }
        const total = Object.values(result.seconds).reduce((a, b) => a + b, 0);
        ctx.stdout.write(
          [
            `image:     ${result.raw} (${formatBytes(result.rawBytes)})`,
            ...(result.xz ? [`xz:        ${result.xz} (${formatBytes(result.xzBytes ?? 0)})`] : []),
            `root:      ${formatBytes(result.rootFsBytes)} in a ${formatBytes(result.rootSlotBytes)} slot`,
            `manifest:  ${result.manifest ?? "(none: pass --key)"}`,
            `version:   ${result.name} ${result.version} (${result.profile})`,
            `build:     ${total.toFixed(1)} s`,
            "",
          ].join("\n"),
        );
      },
    );
}
