/**
 * Sealing a key in the TPM 2.0 with tpm2-tools: a primary key of the owner
 * hierarchy (ECC, SHA-256, the default template, so the same TPM makes the
 * same primary every time) seals the key as a keyed-hash object, optionally
 * bound to a PCR policy. Only the sealed blobs (public and private parts,
 * useless without this very TPM) leave the process; the key itself goes in on
 * stdin and comes out on stdout. Context files live in a 0700 directory in
 * /run (tmpfs) and are removed at once.
 */
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { EosError } from "../../core/errors.ts";
import type { ProcessRunner } from "../process.ts";
import { mustRun, runTool } from "./luks.ts";

export interface TpmOptions {
  /** TPM2TOOLS_TCTI; default `device:/dev/tpmrm0` (the kernel's resource manager). */
  tcti?: string;
  /** Directory for the short-lived context files (default /run/eos-registry). */
  runDir?: string;
}

export interface SealedKey {
  /** base64 of TPM2B_PUBLIC and TPM2B_PRIVATE as tpm2_create writes them. */
  pub: string;
  priv: string;
  pcrs: number[];
}

function tcti(o: TpmOptions): string {
  return o.tcti ?? "device:/dev/tpmrm0";
}

/** Why there is no usable TPM here, or undefined. */
export function tpmMissingReason(o: TpmOptions = {}, sysRoot = "/"): string | undefined {
  const t = tcti(o);
  if (!t.startsWith("device:")) return undefined;
  const dev = t.slice("device:".length);
  if (!existsSync(join(sysRoot, "sys/class/tpm/tpm0"))) return "no TPM (no /sys/class/tpm/tpm0)";
  if (!existsSync(dev)) return `no ${dev}`;
  return undefined;
}

function env(o: TpmOptions): NodeJS.ProcessEnv {
  return { ...process.env, TPM2TOOLS_TCTI: tcti(o) };
}

function pcrSpec(pcrs: number[]): string {
  return `sha256:${pcrs.join(",")}`;
}

async function withWorkDir<T>(o: TpmOptions, f: (dir: string) => Promise<T>): Promise<T> {
  const base = o.runDir ?? "/run/eos-registry";
  await mkdir(base, { recursive: true, mode: 0o700 });
  const dir = await mkdtemp(join(base, "tpm-"));
  try {
    return await f(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Without the kernel's resource manager (swtpm's own TCTI) transient objects stay loaded: flush them. */
async function flush(proc: ProcessRunner, o: TpmOptions): Promise<void> {
  if (tcti(o).includes("tpmrm")) return;
  await runTool(proc, ["tpm2_flushcontext", "-t"], { env: env(o), code: "TPM" });
}

async function primary(proc: ProcessRunner, o: TpmOptions, dir: string): Promise<string> {
  const ctx = join(dir, "primary.ctx");
  await mustRun(proc, ["tpm2_createprimary", "-Q", "-C", "o", "-g", "sha256", "-G", "ecc", "-c", ctx], {
    env: env(o),
    code: "TPM",
    what: "tpm2_createprimary (owner hierarchy)",
    hint: "is the TPM's owner hierarchy protected by a password? EOS needs it open",
  });
  await flush(proc, o);
  return ctx;
}

export async function tpmSeal(
  proc: ProcessRunner,
  key: Buffer,
  pcrs: number[],
  o: TpmOptions = {},
): Promise<SealedKey> {
  return withWorkDir(o, async (dir) => {
    const p = await primary(proc, o, dir);
    const pub = join(dir, "seal.pub");
    const priv = join(dir, "seal.priv");
    const argv = ["tpm2_create", "-Q", "-C", p, "-g", "sha256", "-u", pub, "-r", priv, "-i", "-"];
    if (pcrs.length > 0) {
      const policy = join(dir, "pcr.policy");
      await mustRun(proc, ["tpm2_createpolicy", "-Q", "--policy-pcr", "-l", pcrSpec(pcrs), "-L", policy], {
        env: env(o),
        code: "TPM",
        what: "tpm2_createpolicy",
      });
      await flush(proc, o);
      argv.push("-L", policy);
    }
    await mustRun(proc, argv, { env: env(o), code: "TPM", input: key, what: "tpm2_create (seal)" });
    await flush(proc, o);
    return {
      pub: (await readFile(pub)).toString("base64"),
      priv: (await readFile(priv)).toString("base64"),
      pcrs,
    };
  });
}

export async function tpmUnseal(proc: ProcessRunner, sealed: SealedKey, o: TpmOptions = {}): Promise<Buffer> {
  return withWorkDir(o, async (dir) => {
    const p = await primary(proc, o, dir);
    const pub = join(dir, "seal.pub");
    const priv = join(dir, "seal.priv");
    await writeFile(pub, Buffer.from(sealed.pub, "base64"), { mode: 0o600 });
    await writeFile(priv, Buffer.from(sealed.priv, "base64"), { mode: 0o600 });
    const obj = join(dir, "seal.ctx");
    const load = await runTool(proc, ["tpm2_load", "-Q", "-C", p, "-u", pub, "-r", priv, "-c", obj], {
      env: env(o),
      code: "TPM",
    });
    await flush(proc, o);
    if (load.code !== 0) {
      throw new EosError(
        "TPM",
        "this TPM cannot load the registry's sealed key (it was sealed by another TPM, or the TPM was cleared)",
        {
          hint: `tpm2_load: ${load.stderr.split("\n").slice(-1)[0] ?? ""}; the registry stays closed and untouched`,
        },
      );
    }
    const argv = ["tpm2_unseal", "-c", obj];
    if (sealed.pcrs.length > 0) argv.push("-p", `pcr:${pcrSpec(sealed.pcrs)}`);
    const r = await runTool(proc, argv, { env: env(o), code: "TPM" });
    await flush(proc, o);
    if (r.code !== 0) {
      throw new EosError(
        "TPM",
        `the TPM refuses to unseal the registry key${sealed.pcrs.length ? ` (PCRs ${sealed.pcrs.join(",")} differ from when it was sealed?)` : ""}`,
        { hint: `tpm2_unseal: ${r.stderr.split("\n").slice(-1)[0] ?? ""}` },
      );
    }
    return r.stdout;
  });
}
