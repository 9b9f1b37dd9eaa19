import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from "node:crypto";
import { chmod, readFile, readdir, stat, writeFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { EosError } from "../core/errors.ts";

export async function loadPrivateKey(path: string): Promise<KeyObject> {
  let st;
  try {
    st = await stat(path);
  } catch {
    throw new EosError("NOT_FOUND", `release key ${path} does not exist`, {
      hint: "create one with `eos keygen`",
    });
  }
  if ((st.mode & 0o077) !== 0) {
    throw new EosError(
      "REFUSED",
      `release key ${path} is readable by others (mode ${(st.mode & 0o777).toString(8)})`,
      {
        hint: `chmod 600 ${path}`,
      },
    );
  }
  try {
    const key = createPrivateKey(await readFile(path));
    if (key.asymmetricKeyType !== "ed25519") throw new Error(`a ${key.asymmetricKeyType} key`);
    return key;
  } catch (error) {
    throw new EosError("SIGNATURE", `${path}: not an ed25519 private key (${(error as Error).message})`);
  }
}

export async function loadPublicKey(path: string): Promise<KeyObject> {
  let pem: Buffer;
  try {
    pem = await readFile(path);
  } catch {
    throw new EosError("NOT_FOUND", `trusted key ${path} does not exist`);
  }
  try {
    const key = createPublicKey(pem);
    if (key.asymmetricKeyType !== "ed25519") throw new Error(`a ${key.asymmetricKeyType} key`);
    return key;
  } catch (error) {
    throw new EosError("SIGNATURE", `${path}: not an ed25519 public key (${(error as Error).message})`);
  }
}

/** Trusted keys from files and directories (every *.pub inside a directory). */
export async function loadTrustedKeys(paths: string[]): Promise<KeyObject[]> {
  const keys: KeyObject[] = [];
  for (const path of paths) {
    const st = await stat(path).catch(() => undefined);
    if (st?.isDirectory()) {
      const names = (await readdir(path)).filter((n) => n.endsWith(".pub")).sort();
      for (const name of names) keys.push(await loadPublicKey(join(path, name)));
    } else {
      keys.push(await loadPublicKey(path));
    }
  }
  return keys;
}

export async function generateReleaseKeys(
  dir: string,
  force: boolean,
): Promise<{ key: string; pub: string }> {
  await mkdir(dir, { recursive: true });
  const key = join(dir, "release.key");
  const pub = join(dir, "release.pub");
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const flag = force ? "w" : "wx";
  try {
    await writeFile(key, privateKey.export({ format: "pem", type: "pkcs8" }), { mode: 0o600, flag });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") {
      throw new EosError("REFUSED", `${key} already exists`, { hint: "pass --force to replace it" });
    }
    throw error;
  }
  await chmod(key, 0o600);
  await writeFile(pub, publicKey.export({ format: "pem", type: "spki" }), { mode: 0o644, flag: "w" });
  return { key, pub };
}
