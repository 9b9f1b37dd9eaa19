/**
 * What EC2's instance metadata service (IMDS) says, checked before any of it
 * reaches a file or a command: the public key list, each OpenSSH key line,
 * the host name. The answers come over the network, so every one is read as
 * untrusted text.
 */
import { EosError } from "../errors.ts";

/** IMDS's fixed address; a test or another cloud's compatible service passes its own. */
export const IMDS_DEFAULT_URL = "http://169.254.169.254";
export const IMDS_TOKEN_PATH = "/latest/api/token";
export const IMDS_KEYS_PATH = "/latest/meta-data/public-keys/";
export const IMDS_HOSTNAME_PATH = "/latest/meta-data/hostname";
export const IMDS_TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds";
export const IMDS_TOKEN_HEADER = "X-aws-ec2-metadata-token";

/** The OpenSSH key path of the Nth key of /latest/meta-data/public-keys/. */
export function imdsKeyPath(index: number): string {
  return `${IMDS_KEYS_PATH}${index}/openssh-key`;
}

/** The base URL (http only: IMDS has no TLS), without a trailing slash. */
export function parseImdsUrl(value: string, what: string): string {
  if (!/^http:\/\/[A-Za-z0-9.:[\]-]+(:\d{1,5})?\/?$/.test(value))
    throw new EosError("USAGE", `${what} ${value}: must be http://HOST[:PORT] (IMDS has no path or TLS)`);
  return value.replace(/\/$/, "");
}

export interface PublicKeyEntry {
  index: number;
  /** The key pair's name in EC2 (informational). */
  name: string;
}

/**
 * /latest/meta-data/public-keys/ answers one `N=name` line per key pair
 * (`0=my-key`). Indexes are what the key paths are built from, so only
 * small decimal numbers pass.
 */
export function parsePublicKeyList(text: string): PublicKeyEntry[] {
  const entries: PublicKeyEntry[] = [];
  const lines = text.split("\n").map((l) => l.replace(/\r$/, ""));
  for (const [i, line] of lines.entries()) {
    if (line.trim() === "") continue;
    const m = /^(\d{1,3})=([\x20-\x7e]{0,255})$/.exec(line);
    if (!m)
      throw new EosError(
        "CONFIG",
        `IMDS ${IMDS_KEYS_PATH} line ${i + 1} ${JSON.stringify(line.slice(0, 80))}: not N=name`,
      );
    const index = Number(m[1]);
    if (entries.some((e) => e.index === index))
      throw new EosError("CONFIG", `IMDS ${IMDS_KEYS_PATH}: key index ${index} listed twice`);
    entries.push({ index, name: m[2] ?? "" });
  }
  return entries.sort((a, b) => a.index - b.index);
}

const KEY_TYPES = new Set([
  "ssh-ed25519",
  "ssh-rsa",
  "ecdsa-sha2-nistp256",
  "ecdsa-sha2-nistp384",
  "ecdsa-sha2-nistp521",
  "sk-ssh-ed25519@openssh.com",
  "sk-ecdsa-sha2-nistp256@openssh.com",
]);

/**
 * One OpenSSH public key line, returned as the line to write; anything else
 * (options such as `command=` that would change what the key may do, several
 * lines, a blob that is not the key type's) is refused. The blob's first
 * field is the key type again: a mislabelled or truncated key fails here, not
 * in sshd at login time.
 */
export function validateOpenSshKey(text: string, what: string): string {
  const lines = text.split("\n").filter((l) => l.trim() !== "");
  if (lines.length !== 1)
    throw new EosError("CONFIG", `${what}: expected one OpenSSH public key line, got ${lines.length}`);
  const line = (lines[0] as string).trim();
  const m = /^(\S+) ([A-Za-z0-9+/]+={0,2})( [\x20-\x7e]{0,255})?$/.exec(line);
  if (!m || !KEY_TYPES.has(m[1] as string))
    throw new EosError(
      "CONFIG",
      `${what}: not an OpenSSH public key line (TYPE BASE64 [comment]): ${JSON.stringify(line.slice(0, 60))}`,
      { hint: "the instance's key pair must be an OpenSSH public key (ssh-ed25519, ssh-rsa, ecdsa-sha2-*)" },
    );
  const blob = Buffer.from(m[2] as string, "base64");
  const typeLength = blob.length >= 4 ? blob.readUInt32BE(0) : -1;
  const blobType =
    typeLength > 0 && typeLength <= 64 ? blob.subarray(4, 4 + typeLength).toString("latin1") : "";
  if (blobType !== m[1] || blob.length < 4 + typeLength + 8)
    throw new EosError("CONFIG", `${what}: the key's data does not hold a ${m[1]} key`);
  return line;
}

export interface InstanceHostname {
  /** As IMDS gave it, lowercased: /etc/hosts maps it. */
  fqdn: string;
  /** Its first label: the system's host name, as Debian's cloud images set it. */
  short: string;
}

/**
 * /latest/meta-data/hostname (`ip-10-0-1-5.eu-west-1.compute.internal`): a
 * DNS name of letters, digits and hyphens, labels of 1-63 characters, at most
 * 253 in all. It reaches /etc/hostname, /etc/hosts and `hostname`, so
 * nothing else passes (no spaces, no leading hyphen that a tool could read as
 * an option, no trailing dot).
 */
export function parseInstanceHostname(text: string): InstanceHostname {
  const fqdn = text.trim().toLowerCase();
  const label = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
  if (fqdn.length === 0 || fqdn.length > 253 || !fqdn.split(".").every((l) => label.test(l)))
    throw new EosError(
      "CONFIG",
      `IMDS ${IMDS_HOSTNAME_PATH} ${JSON.stringify(text.slice(0, 80))}: not a host name (labels of letters, digits and -, at most 253 characters)`,
    );
  return { fqdn, short: fqdn.split(".")[0] as string };
}

const BEGIN = "# eos-ec2-init: keys from the instance metadata service (rewritten at every boot)";
const END = "# eos-ec2-init: end";

/**
 * authorized_keys with the instance's keys in a block of their own: the
 * lines the image shipped stay, a block an earlier run wrote is replaced, so
 * running twice (or once per boot on a root whose /root persists) never
 * piles keys up.
 */
export function mergeAuthorizedKeys(existing: string, keys: readonly string[]): string {
  const kept: string[] = [];
  let inBlock = false;
  for (const line of existing.split("\n")) {
    if (line === BEGIN) inBlock = true;
    else if (line === END) inBlock = false;
    else if (!inBlock) kept.push(line);
  }
  while (kept.length > 0 && kept.at(-1) === "") kept.pop();
  const block = keys.length > 0 ? [BEGIN, ...keys, END] : [];
  const lines = [...kept, ...block];
  return lines.length > 0 ? `${lines.join("\n")}\n` : "";
}

/** /etc/hosts with the instance's name on 127.0.1.1 (Debian's convention), other lines kept. */
export function hostsWithName(existing: string, name: InstanceHostname): string {
  const names = name.fqdn === name.short ? name.short : `${name.fqdn} ${name.short}`;
  const lines = existing.split("\n").filter((l) => !/^127\.0\.1\.1\s/.test(l));
  while (lines.length > 0 && lines.at(-1) === "") lines.pop();
  const at = lines.findIndex((l) => /^127\.0\.0\.1\s/.test(l));
  lines.splice(at + 1, 0, `127.0.1.1\t${names}`);
  return `${lines.join("\n")}\n`;
}

export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

/** A user's line of /etc/passwd (name:x:uid:gid:gecos:home:shell). */
export function findPasswdEntry(passwd: string, user: string): PasswdEntry | undefined {
  for (const line of passwd.split("\n")) {
    const f = line.split(":");
    if (f.length < 7 || f[0] !== user) continue;
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    const home = f[5] ?? "";
    if (
      !Number.isSafeInteger(uid) ||
      !Number.isSafeInteger(gid) ||
      !home.startsWith("/") ||
      home.split("/").includes("..")
    )
      return undefined;
    return { name: user, uid, gid, home };
  }
  return undefined;
}
