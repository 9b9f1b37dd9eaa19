/** `eos`: release keys and signed manifests (build, run and demo arrive with the image issue). */
import { basename } from "node:path";
import {
  encodeManifest,
  encodeSignatures,
  signManifest,
  MANIFEST_SCHEMA,
  type Manifest,
} from "../core/manifest.ts";
import { EosError } from "../core/errors.ts";
import type { Context } from "../io/context.ts";
import { atomicWriteFile } from "../io/files.ts";
import { hashImagePartitions } from "../io/disk-image.ts";
import { generateReleaseKeys, loadPrivateKey } from "../io/keys.ts";
import { progress } from "../io/progress.ts";
import { newProgram, parseProgram } from "./main.ts";
import { registerBuild } from "./eos-build.ts";
import { registerRun } from "./eos-run.ts";
import { registerDemo } from "./eos-demo.ts";
import { stat } from "node:fs/promises";

const ARCH: Record<string, string> = { x64: "x86_64", arm64: "aarch64", arm: "armv7l", riscv64: "riscv64" };

export function defaultVersion(created: Date): string {
  // A sortable, monotonic default: the creation time, so downgrade checks work without a scheme.
  return created
    .toISOString()
    .replace(/[-:]/g, "")
    .replace("T", ".")
    .replace(/\..*Z$/, "")
    .replace(/Z$/, "");
}

export function creationTime(ctx: Context): Date {
  const epoch = ctx.env.SOURCE_DATE_EPOCH;
  if (epoch !== undefined) {
    if (!/^\d+$/.test(epoch))
      throw new EosError("USAGE", `SOURCE_DATE_EPOCH must be seconds since 1970, got ${epoch}`);
    return new Date(Number(epoch) * 1000);
  }
  return ctx.now();
}

export async function writeManifest(
  ctx: Context,
  image: string,
  options: { keys: string[]; name?: string; version?: string; arch?: string; quiet?: boolean },
): Promise<{ manifestPath: string; manifest: Manifest }> {
  const keys = await Promise.all(options.keys.map((k) => loadPrivateKey(k)));
  const st = await stat(image).catch(() => undefined);
  if (!st) throw new EosError("NOT_FOUND", `image ${image} does not exist`);
  const bar = options.quiet
    ? undefined
    : progress(ctx.stderr, `hashing ${basename(image)}`, st.size, { interactive: ctx.interactive });
  const parts = await hashImagePartitions(image, (n) => bar?.add(n));
  bar?.done();
  const created = creationTime(ctx);
  const manifest: Manifest = {
    schema: MANIFEST_SCHEMA,
    name: options.name ?? basename(image).replace(/\.raw$/, ""),
    version: options.version ?? defaultVersion(created),
    architecture: options.arch ?? ARCH[process.arch] ?? process.arch,
    created: created.toISOString(),
    partitions: parts.firmware ? { root: parts.root, firmware: parts.firmware } : { root: parts.root },
  };
  let bytes: Buffer;
  try {
    bytes = encodeManifest(manifest);
  } catch (error) {
    throw new EosError("USAGE", `invalid manifest field: ${(error as Error).message.split("\n")[0]}`);
  }
  const manifestPath = `${image}.manifest.json`;
  await atomicWriteFile(manifestPath, bytes);
  await atomicWriteFile(`${manifestPath}.sig`, encodeSignatures(signManifest(bytes, keys)));
  return { manifestPath, manifest };
}

export async function eosMain(argv: string[], ctx: Context): Promise<number> {
  const program = newProgram("eos", ctx).description(
    "EOS image tooling: release keys, signed manifests, image builds, QEMU runs and the demo",
  );
  let result = 0;
  program
    .command("keygen")
    .description("write an ed25519 release key pair: DIR/release.key (0600) and DIR/release.pub")
    .requiredOption("--out <dir>", "directory for the key pair")
    .option("--force", "replace an existing key pair")
    .action(async (opts: { out: string; force?: boolean }) => {
      const { key, pub } = await generateReleaseKeys(opts.out, Boolean(opts.force));
      ctx.stdout.write(`private key: ${key}\npublic key:  ${pub}\n`);
    });
  program
    .command("manifest")
    .description("write IMAGE.manifest.json and its detached signature IMAGE.manifest.json.sig")
    .argument("<image>", "GPT disk image with p.lxreadonly (and optionally p.UEFI)")
    .requiredOption("--key <file...>", "release private key(s); several sign a key rotation")
    .option("--name <name>", "image name (default: file name without .raw)")
    .option("--version <version>", "image version (default: creation time, sortable)")
    .option("--arch <arch>", "architecture (default: this machine's)")
    .option("--json", "print the manifest as JSON")
    .action(
      async (
        image: string,
        opts: { key: string[]; name?: string; version?: string; arch?: string; json?: boolean },
      ) => {
        const { manifestPath, manifest } = await writeManifest(ctx, image, {
          keys: opts.key,
          ...(opts.name === undefined ? {} : { name: opts.name }),
          ...(opts.version === undefined ? {} : { version: opts.version }),
          ...(opts.arch === undefined ? {} : { arch: opts.arch }),
        });
        if (opts.json) ctx.stdout.write(`${JSON.stringify(manifest, null, 2)}\n`);
        else
          ctx.stdout.write(
            `${manifestPath}: ${manifest.name} ${manifest.version} root ${manifest.partitions.root.sha256}\n`,
          );
        result = 0;
      },
    );
  registerBuild(program, ctx, {
    writeManifest: async (raw, keys, name, version) =>
      (await writeManifest(ctx, raw, { keys, name, version, quiet: !ctx.interactive })).manifestPath,
  });
  registerRun(program, ctx, (code) => (result = code));
  registerDemo(
    program,
    ctx,
    {
      writeManifest: async (raw, keys, name, version) =>
        (await writeManifest(ctx, raw, { keys, name, version, quiet: !ctx.interactive })).manifestPath,
    },
    (code) => (result = code),
  );
  const early = await parseProgram(program, argv);
  return early ?? result;
}
