/**
 * `eos`: the image tooling. keygen and manifest (release keys, signed
 * manifests), build (a bootable A/B disk image from a description), run
 * (boot it in QEMU), demo (build, serve, boot, update, roll back) and flash
 * (write an image to an SD card or USB stick, verified).
 */
import { resolve } from "node:path";
import { EosError } from "../core/errors.ts";
import { ARCHITECTURES, parseArchitecture } from "../core/image/arch.ts";
import { PROFILES, parseSize, type Profile } from "../core/image/description.ts";
import type { Context } from "../io/context.ts";
import { runDemo } from "../io/demo.ts";
import { buildImage } from "../io/image/build.ts";
import { repoRoot } from "../io/image/project.ts";
import { flashImage } from "../io/image/flash.ts";
import { generateReleaseKeys } from "../io/keys.ts";
import { runImage } from "../io/machine/run.ts";
import { formatBytes } from "../io/progress.ts";
import { writeManifest } from "../io/release.ts";
import { newProgram, parseProgram, usageError } from "./main.ts";

function wholeNumber(name: string, value: string, min: number, max: number): number {
  if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > max)
    throw usageError(`${name} ${value}: must be a whole number from ${min} to ${max}`);
  return Number(value);
}

function size(name: string, value: string): number {
  try {
    return value === "0" ? 0 : parseSize(value);
  } catch (error) {
    throw usageError(`${name} ${value}: ${(error as Error).message}`);
  }
}

interface BuildOpts {
  profile: string;
  arch: string;
  cache: boolean;
  out: string;
  key?: string[];
  version?: string;
  dist?: string;
  work?: string;
  keepWork?: boolean;
  xz: boolean;
  json?: boolean;
}

interface RunOpts {
  arch?: string;
  sshPort?: string;
  sshKey?: string;
  tpm?: boolean;
  headless?: boolean;
  consoleLog?: string;
  memory: string;
  cpus: string;
  accel: string;
  work?: string;
  registrySize: string;
  diskSize?: string;
  waitSsh?: boolean;
}

interface FlashOpts {
  yes?: boolean;
  force?: boolean;
  manifest?: string;
  pub?: string[];
  json?: boolean;
}

interface DemoOpts {
  work: string;
  description?: string;
  port: string;
  /** false with --no-package: v2 is v1 with a new version (one base root to build). */
  package: string | false;
  rebuild?: boolean;
  arch: string;
}

export async function eosMain(argv: string[], ctx: Context): Promise<number> {
  const program = newProgram("eos", ctx).description(
    "EOS image tooling: release keys, signed manifests, image builds, QEMU runs and the demo",
  );
  let result = 0;
  const out = (s: string): void => void ctx.stdout.write(s);

  program
    .command("keygen")
    .description("write an ed25519 release key pair: DIR/release.key (0600) and DIR/release.pub")
    .requiredOption("--out <dir>", "directory for the key pair")
    .option("--force", "replace an existing key pair")
    .action(async (opts: { out: string; force?: boolean }) => {
      const { key, pub } = await generateReleaseKeys(opts.out, Boolean(opts.force));
      out(`private key: ${key}\npublic key:  ${pub}\n`);
    });

  program
    .command("manifest")
    .description("write IMAGE.manifest.json and its detached signature IMAGE.manifest.json.sig")
    .argument("<image>", "GPT disk image with p.lxreadonly (and optionally p.UEFI)")
    .requiredOption("--key <file...>", "release private key(s); several sign a key rotation")
    .option("--name <name>", "image name (default: file name without .raw)")
    .option("--version <version>", "image version (default: creation time, sortable)")
    .option("--arch <arch>", "architecture (default: what the slots' GPT type says, else this machine's)")
    .option("--json", "print the manifest as JSON")
    .action(
      async (
        image: string,
        opts: { key: string[]; name?: string; version?: string; arch?: string; json?: boolean },
      ) => {
        const { manifestPath, manifest } = await writeManifest(ctx, image, { ...opts, keys: opts.key });
        if (opts.json) out(`${JSON.stringify(manifest, null, 2)}\n`);
        else
          out(
            `${manifestPath}: ${manifest.name} ${manifest.version} root ${manifest.partitions.root.sha256}\n`,
          );
      },
    );

  program
    .command("build")
    .description(
      "build a bootable GPT disk image (NAME.raw, NAME.raw.xz, signed manifest) from an image description",
    )
    .argument("<description>", "image description (YAML), e.g. images/default.yaml")
    .option(
      "--profile <profile>",
      "AB (two root slots), Static (slot A only), EC2 (AB for an EC2 UEFI AMI) or RPI (AB for the Raspberry Pi 4, --arch aarch64)",
      "AB",
    )
    .option("--arch <arch>", `target architecture: ${ARCHITECTURES.join(" or ")}`, "x86_64")
    .option(
      "--no-cache",
      "build the base root with mmdebstrap even if the root cache (EOS_CACHE_DIR, default /var/cache/eos/roots) has it",
    )
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
    .action(async (description: string, opts: BuildOpts) => {
      if (!(PROFILES as readonly string[]).includes(opts.profile))
        throw usageError(`--profile ${opts.profile}: must be one of ${PROFILES.join(", ")}`);
      const architecture = parseArchitecture(opts.arch);
      const r = await buildImage(ctx, {
        description,
        profile: opts.profile as Profile,
        architecture,
        noCache: !opts.cache,
        outDir: opts.out,
        keys: opts.key ?? [],
        noXz: !opts.xz,
        keepWork: Boolean(opts.keepWork),
        ...(opts.version === undefined ? {} : { version: opts.version }),
        ...(opts.dist === undefined ? {} : { distDir: opts.dist }),
        ...(opts.work === undefined ? {} : { workDir: opts.work }),
      });
      if (opts.json) {
        out(`${JSON.stringify(r, null, 2)}\n`);
        return;
      }
      const total = Object.values(r.seconds).reduce((a, b) => a + b, 0);
      out(
        [
          `image:     ${r.raw} (${formatBytes(r.rawBytes)})`,
          ...(r.xz ? [`xz:        ${r.xz} (${formatBytes(r.xzBytes ?? 0)})`] : []),
          `root:      ${formatBytes(r.rootFsBytes)} in a ${formatBytes(r.rootSlotBytes)} slot`,
          `manifest:  ${r.manifest ?? "(none: pass --key)"}`,
          `version:   ${r.name} ${r.version} (${r.architecture}, ${r.profile})`,
          `base root: ${r.baseRootCached ? "from the root cache" : "built with mmdebstrap"}`,
          `build:     ${total.toFixed(1)} s`,
          "",
        ].join("\n"),
      );
    });

  program
    .command("run")
    .description("boot a disk image in QEMU: the image stays untouched, writes go to a working disk")
    .argument("<image>", "disk image (NAME.raw) made by eos build")
    .option(
      "--arch <arch>",
      `${ARCHITECTURES.join(" or ")} (default: what the image's root slot type says): QEMU, board and UEFI firmware`,
    )
    .option(
      "--ssh-port <port>",
      "host port (127.0.0.1) forwarded to the guest's SSH port; default: a free one",
    )
    .option("--ssh-key <file>", "private key for the SSH hint and --wait-ssh")
    .option("--tpm", "give the guest a TPM 2.0 (swtpm)")
    .option("--headless", "no terminal: log the console to a file (--console-log) and wait for QEMU to exit")
    .option(
      "--console-log <file>",
      "console log in headless mode (default: WORK/console.log with --work, else ./NAME.console.log)",
    )
    .option("--memory <MiB>", "guest memory in MiB", "1024")
    .option("--cpus <n>", "guest CPUs", "2")
    .option("--accel <accel>", "auto, kvm or tcg (auto: KVM only if it really works here)", "auto")
    .option(
      "--work <dir>",
      "working directory (disk overlay, firmware variables, TPM state); kept when given",
    )
    .option("--registry-size <size>", "size of the extra registry disk (0 for none)", "2G")
    .option("--disk-size <size>", "virtual size of the working disk (default: the image's size)")
    .option("--wait-ssh", "headless: print when SSH answers (needs --ssh-key)")
    .action(async (image: string, opts: RunOpts) => {
      if (!["auto", "kvm", "tcg"].includes(opts.accel))
        throw usageError(`--accel ${opts.accel}: auto, kvm or tcg`);
      result = await runImage(ctx, {
        image,
        architecture: opts.arch === undefined ? undefined : parseArchitecture(opts.arch),
        work: opts.work,
        headless: Boolean(opts.headless),
        consoleLog: opts.consoleLog,
        waitSsh: Boolean(opts.waitSsh),
        sshPort: opts.sshPort === undefined ? 0 : wholeNumber("--ssh-port", opts.sshPort, 1, 65535),
        memoryMiB: wholeNumber("--memory", opts.memory, 128, 65536),
        cpus: wholeNumber("--cpus", opts.cpus, 1, 64),
        accel: opts.accel as "auto" | "kvm" | "tcg",
        tpm: Boolean(opts.tpm),
        registryDiskBytes: size("--registry-size", opts.registrySize),
        ...(opts.diskSize ? { diskBytes: size("--disk-size", opts.diskSize) } : {}),
        ...(opts.sshKey ? { sshKey: opts.sshKey } : {}),
      });
    });

  program
    .command("demo")
    .description("build v1 and v2, serve v2, boot v1 in QEMU, update to v2 (kexec, commit), roll back to v1")
    .option("--work <dir>", "working directory (images, keys, VM); reused between runs", ".tmp/demo")
    .option("--description <file>", "image description (default: the repository's images/default.yaml)")
    .option("--port <port>", "update server port on 127.0.0.1", "8080")
    .option("--package <name>", "the package v2 adds", "tree")
    .option("--no-package", "v2 adds no package, only a new version (one base root: quicker on arm64)")
    .option(
      "--arch <arch>",
      `architecture of the images and the VM: ${ARCHITECTURES.join(" or ")} (aarch64 is emulated here)`,
      "x86_64",
    )
    .option("--rebuild", "build both images even if the previous run's are current")
    .action(async (opts: DemoOpts) => {
      const repo = repoRoot();
      const architecture = parseArchitecture(opts.arch);
      const defaultDescription = architecture === "aarch64" ? "images/aarch64.yaml" : "images/default.yaml";
      const description = opts.description ?? (repo ? resolve(repo, defaultDescription) : undefined);
      if (!description) throw usageError("--description is required outside a checkout");
      const port = wholeNumber("--port", opts.port, 1, 65535);
      if (opts.package !== false && !/^[a-z0-9][a-z0-9+.-]*$/.test(opts.package))
        throw usageError(`--package: not a Debian package name: ${opts.package}`);
      if (process.getuid?.() !== 0)
        throw new EosError("REFUSED", "eos demo builds images with mmdebstrap and chroot: run it as root");
      const r = await runDemo(ctx, {
        workDir: resolve(opts.work),
        description,
        port,
        ...(opts.package !== false ? { extraPackage: opts.package } : {}),
        rebuild: Boolean(opts.rebuild),
        architecture,
        log: (line) => out(`${line}\n`),
      });
      const s = r.states;
      const ok =
        s.booted.version === "1.0.0" &&
        s.booted.checkExit === 1 &&
        s.updated.version === "2.0.0" &&
        s.updated.grubenv.eos_default === "B" &&
        s.rolledBack?.version === "1.0.0";
      out(
        ok ? "demo: every step did what it should\n" : "demo: a step did not end as expected (see above)\n",
      );
      result = ok ? 0 : 1;
    });

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

  const early = await parseProgram(program, argv);
  return early ?? result;
}
