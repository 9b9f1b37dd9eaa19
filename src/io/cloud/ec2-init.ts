/**
 * One boot's EC2 set-up, without cloud-init: the instance's SSH public keys
 * into the login user's authorized_keys and its host name into
 * /etc/hostname, /etc/hosts and the kernel. Everything is fetched and
 * checked before anything is written. EOS's root is an overlay over the
 * read-only slot with a tmpfs upper layer, so these writes last one boot:
 * the unit runs at every boot (as the SSH host keys are made at every boot),
 * and IMDS is asked again each time.
 */
import { chown, mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import {
  findPasswdEntry,
  hostsWithName,
  imdsKeyPath,
  IMDS_HOSTNAME_PATH,
  IMDS_KEYS_PATH,
  mergeAuthorizedKeys,
  parseInstanceHostname,
  parsePublicKeyList,
  validateOpenSshKey,
  type InstanceHostname,
} from "../../core/cloud/imds.ts";
import { EosError, errorMessage } from "../../core/errors.ts";
import { sysPath, type Context } from "../context.ts";
import { atomicWriteFile } from "../files.ts";
import { ImdsClient, ImdsUnavailable, type ImdsClientOptions } from "./imds-client.ts";

export interface Ec2InitOptions {
  imds: ImdsClientOptions;
  /** Whose authorized_keys get the instance's keys. */
  user: string;
  /** Sets the running system's host name; undefined: files only (a root that is not this system). */
  setHostname?: (name: string) => Promise<void>;
}

export type Ec2InitResult =
  | { metadata: "unavailable"; reason: string }
  | {
      metadata: "read";
      /** Keys written, by key pair name. */
      keys: Array<{ index: number; name: string }>;
      /** Keys IMDS listed that were refused, with why. */
      refused: Array<{ index: number; reason: string }>;
      /** Why no keys were written (no key pair), when none were listed. */
      noKeys?: string;
      authorizedKeys?: string;
      hostname?: InstanceHostname & { kernel: boolean };
      noHostname?: string;
    };

async function readText(path: string): Promise<string> {
  return readFile(path, "utf8").catch((error: NodeJS.ErrnoException) => {
    if (error.code === "ENOENT") return "";
    throw new EosError("IO", `${path}: ${error.code ?? error.message}`);
  });
}

export async function ec2Init(ctx: Context, o: Ec2InitOptions): Promise<Ec2InitResult> {
  const client = new ImdsClient(o.imds);
  try {
    await client.session();
  } catch (error) {
    if (error instanceof ImdsUnavailable) return { metadata: "unavailable", reason: error.message };
    throw error;
  }

  // Fetch and check everything first, write afterwards.
  const keys: Array<{ index: number; name: string; line: string }> = [];
  const refused: Array<{ index: number; reason: string }> = [];
  const list = await client.get(IMDS_KEYS_PATH);
  let noKeys: string | undefined;
  if (list === undefined) {
    noKeys = `IMDS ${IMDS_KEYS_PATH}: 404, the instance was launched without a key pair (run-instances --key-name)`;
  } else {
    const entries = parsePublicKeyList(list);
    if (entries.length === 0) noKeys = `IMDS ${IMDS_KEYS_PATH} lists no key`;
    for (const e of entries) {
      const path = imdsKeyPath(e.index);
      const text = await client.get(path);
      if (text === undefined) {
        refused.push({ index: e.index, reason: `IMDS ${path}: 404 although ${IMDS_KEYS_PATH} lists it` });
        continue;
      }
      try {
        keys.push({ ...e, line: validateOpenSshKey(text, `IMDS ${path}`) });
      } catch (error) {
        refused.push({ index: e.index, reason: errorMessage(error) });
      }
    }
  }
  const hostText = await client.get(IMDS_HOSTNAME_PATH);
  const hostname = hostText === undefined ? undefined : parseInstanceHostname(hostText);

  const result: Ec2InitResult = {
    metadata: "read",
    keys: keys.map(({ index, name }) => ({ index, name })),
    refused,
    ...(noKeys ? { noKeys } : {}),
    ...(hostText === undefined ? { noHostname: `IMDS ${IMDS_HOSTNAME_PATH}: 404` } : {}),
  };

  if (list !== undefined) {
    const passwd = await readText(sysPath(ctx, "/etc/passwd"));
    const user = findPasswdEntry(passwd, o.user);
    if (!user)
      throw new EosError(
        "CONFIG",
        `user ${o.user} is not in ${sysPath(ctx, "/etc/passwd")} (or has no home)`,
        {
          hint: "pass --user with the image's login user",
        },
      );
    const owner = { uid: user.uid, gid: user.gid };
    const sshDir = sysPath(ctx, join(user.home, ".ssh"));
    await mkdir(sshDir, { recursive: true, mode: 0o700 });
    await chown(sshDir, owner.uid, owner.gid);
    const file = join(sshDir, "authorized_keys");
    const merged = mergeAuthorizedKeys(
      await readText(file),
      keys.map((k) => k.line),
    );
    await atomicWriteFile(file, merged, 0o600, { owner });
    result.authorizedKeys = join(user.home, ".ssh/authorized_keys");
  }

  if (hostname) {
    await atomicWriteFile(sysPath(ctx, "/etc/hostname"), `${hostname.short}\n`, 0o644);
    const hosts = sysPath(ctx, "/etc/hosts");
    await atomicWriteFile(hosts, hostsWithName(await readText(hosts), hostname), 0o644);
    if (o.setHostname) await o.setHostname(hostname.short);
    result.hostname = { ...hostname, kernel: Boolean(o.setHostname) };
  }
  return result;
}
