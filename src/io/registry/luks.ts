/**
 * cryptsetup (LUKS2) and the few block-device tools the registry needs,
 * argv only. Keys go to cryptsetup on stdin (`--key-file=-`), never on a
 * command line or in a file.
 */
import { EosError, type ErrorCode } from "../../core/errors.ts";
import type { ProcessRunner } from "../process.ts";

export interface ToolResult {
  code: number;
  stdout: Buffer;
  stderr: string;
}

/** Runs a tool; never throws for a non-zero exit (the caller decides), only when it cannot start. */
export async function runTool(
  proc: ProcessRunner,
  argv: string[],
  options: { input?: Buffer | string; env?: NodeJS.ProcessEnv; code?: ErrorCode; timeoutMs?: number } = {},
): Promise<ToolResult> {
  const r = await proc.run(argv, {
    ...options,
    code: options.code ?? "REGISTRY",
    check: false,
    hint: `install ${argv[0] ?? "it"} (cryptsetup-bin, xfsprogs, tpm2-tools)`,
  });
  return { code: r.code, stdout: r.stdoutBytes, stderr: r.stderr };
}

/** Like runTool but throws EosError(code) naming the command and its stderr. */
export async function mustRun(
  proc: ProcessRunner,
  argv: string[],
  options: {
    input?: Buffer | string;
    env?: NodeJS.ProcessEnv;
    code?: ErrorCode;
    what?: string;
    hint?: string;
  } = {},
): Promise<ToolResult> {
  const r = await runTool(proc, argv, options);
  if (r.code !== 0) {
    throw new EosError(
      options.code ?? "REGISTRY",
      `${options.what ?? argv.slice(0, 2).join(" ")} failed (exit ${r.code}): ${r.stderr.split("\n").slice(-4).join(" | ") || "no message"}`,
      options.hint ? { hint: options.hint } : {},
    );
  }
  return r;
}

/** Fast key derivation: our keys are 64 random bytes, so a slow PBKDF adds nothing (as systemd-cryptenroll does). */
const PBKDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];

export async function luksFormat(
  proc: ProcessRunner,
  device: string,
  key: Buffer,
  label: string,
): Promise<void> {
  await mustRun(
    proc,
    [
      "cryptsetup",
      "luksFormat",
      "--batch-mode",
      "--type",
      "luks2",
      ...PBKDF,
      `--label=${label}`,
      "--key-file=-",
      device,
    ],
    { input: key, what: `cryptsetup luksFormat ${device}` },
  );
}

/** Sets the LUKS2 header's label ("" clears it). */
export async function luksSetLabel(proc: ProcessRunner, device: string, label: string): Promise<void> {
  await mustRun(proc, ["cryptsetup", "config", `--label=${label}`, device], {
    what: `cryptsetup config --label ${device}`,
  });
}

export async function isLuks(proc: ProcessRunner, device: string): Promise<boolean> {
  return (await runTool(proc, ["cryptsetup", "isLuks", device])).code === 0;
}

/** Imports a token (JSON) for a keyslot; returns its id. */
export async function luksTokenImport(proc: ProcessRunner, device: string, json: string): Promise<void> {
  await mustRun(proc, ["cryptsetup", "token", "import", "--json-file=-", device], {
    input: json,
    what: `cryptsetup token import ${device}`,
  });
}

/** All tokens' JSON (ids 0..31 that exist). */
export async function luksTokens(
  proc: ProcessRunner,
  device: string,
): Promise<Array<{ id: number; json: string }>> {
  const dump = await mustRun(proc, ["cryptsetup", "luksDump", device], {
    what: `cryptsetup luksDump ${device}`,
    hint: `${device} has no readable LUKS2 header (corrupt, or not a registry)`,
  });
  const text = dump.stdout.toString();
  const section = /^Tokens:\n((?:[ \t].*\n)*)/m.exec(text)?.[1] ?? "";
  const ids = [...section.matchAll(/^\s+(\d+): /gm)].map((m) => Number(m[1]));
  const out: Array<{ id: number; json: string }> = [];
  for (const id of ids) {
    const r = await mustRun(proc, ["cryptsetup", "token", "export", "--token-id", String(id), device]);
    out.push({ id, json: r.stdout.toString() });
  }
  return out;
}

/** Opens DEVICE as /dev/mapper/NAME with the key on stdin; false when the key is wrong. */
export async function luksOpen(
  proc: ProcessRunner,
  device: string,
  name: string,
  key: Buffer,
): Promise<void> {
  const r = await runTool(proc, ["cryptsetup", "open", "--type", "luks2", "--key-file=-", device, name], {
    input: key,
  });
  if (r.code === 0) return;
  if (r.code === 2) {
    throw new EosError("REGISTRY", `${device}: the key does not open the registry (no key slot matches)`, {
      hint: "the key was sealed by another TPM or comes from another key file; nothing was changed",
    });
  }
  if (r.code === 5) {
    throw new EosError("REGISTRY", `${device} or the mapping ${name} is already in use: ${r.stderr}`, {
      hint: "flake-registry --stop closes it",
    });
  }
  throw new EosError("REGISTRY", `cryptsetup open ${device} failed (exit ${r.code}): ${r.stderr}`);
}

export async function luksClose(proc: ProcessRunner, name: string): Promise<void> {
  await mustRun(proc, ["cryptsetup", "close", name], { what: `cryptsetup close ${name}` });
}

/** `cryptsetup status NAME`: undefined when the mapping is not active; else its backing device. */
export async function luksStatus(
  proc: ProcessRunner,
  name: string,
): Promise<{ device: string; size: number } | undefined> {
  const r = await runTool(proc, ["cryptsetup", "status", name]);
  if (r.code !== 0) return undefined;
  const text = r.stdout.toString();
  const device = /^\s*device:\s*(\S+)/m.exec(text)?.[1] ?? "?";
  const sectors = Number(/^\s*size:\s*(\d+) sectors/m.exec(text)?.[1] ?? "0");
  return { device, size: sectors * 512 };
}

/** Low-level signature probe (`blkid -p`): empty map when the device holds nothing blkid knows. */
export async function probeSignatures(proc: ProcessRunner, device: string): Promise<string> {
  const r = await runTool(proc, ["blkid", "-p", "-o", "export", device]);
  if (r.code === 2) return "";
  if (r.code !== 0) throw new EosError("REGISTRY", `blkid -p ${device} failed (exit ${r.code}): ${r.stderr}`);
  return r.stdout.toString();
}
