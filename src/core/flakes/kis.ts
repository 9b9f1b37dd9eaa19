/**
 * KIS images (KIWI's "kis" type, as flake-pilot pulls them): a tarball with
 * a root file system image, `*.kernel`, an optional `*.initrd` and an
 * optional `*.sha256`. Pulled into /var/lib/firecracker/images/NAME/ as
 * `rootfs`, `kernel` and `initrd`. Pure: which member is what, what the
 * checksums say, which sources are allowed.
 */
import { EosError } from "../errors.ts";

export const DEFAULT_IMAGES_DIR = "/var/lib/firecracker/images";

const IMAGE_NAME = /^[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}$/;

export function assertVmImageName(name: string, what = "--name"): string {
  if (!IMAGE_NAME.test(name) || name.includes("..")) {
    throw new EosError(
      "USAGE",
      `${what} ${JSON.stringify(name)} is not a VM image name: use letters, digits and . _ + -`,
    );
  }
  return name;
}

export interface KisMembers {
  rootfs: string;
  kernel: string;
  initrd: string | undefined;
  sha256: string | undefined;
}

const IGNORED = /\.(md5|sha1|append|packages|verified|changes|report|json|txt|xml)$/;
const ROOTFS_SUFFIX = /\.(raw|img|ext[234]|xfs|btrfs|squashfs|erofs|fs)$/;

/**
 * Classifies the regular files of an unpacked KIS tarball (paths relative
 * to its top). Errors name what is missing or ambiguous.
 */
export function classifyKisMembers(files: string[], source: string): KisMembers {
  const base = (f: string) => f.split("/").pop() ?? f;
  const pick = (what: string, test: (name: string) => boolean): string | undefined => {
    const found = files.filter((f) => test(base(f)));
    if (found.length > 1) {
      throw new EosError("VM", `${source}: more than one ${what} in the KIS image (${found.join(", ")})`);
    }
    return found[0];
  };
  const kernel = pick("kernel", (n) => n.endsWith(".kernel"));
  const initrd = pick("initrd", (n) => n.endsWith(".initrd"));
  const sha256 = pick("checksum file", (n) => n.endsWith(".sha256"));
  const rest = files.filter((f) => f !== kernel && f !== initrd && f !== sha256 && !IGNORED.test(base(f)));
  let rootfs: string | undefined;
  if (rest.length === 1) rootfs = rest[0];
  else if (rest.length > 1) {
    const images = rest.filter((f) => ROOTFS_SUFFIX.test(base(f)));
    if (images.length !== 1) {
      throw new EosError(
        "VM",
        `${source}: cannot tell which file is the root file system image (${rest.join(", ")})`,
      );
    }
    rootfs = images[0];
  }
  if (!kernel) {
    throw new EosError(
      "VM",
      `${source}: the KIS image has no kernel (no *.kernel file; found: ${files.join(", ") || "nothing"})`,
    );
  }
  if (!rootfs) {
    throw new EosError(
      "VM",
      `${source}: the KIS image has no root file system image (found: ${files.join(", ")})`,
    );
  }
  return { rootfs, kernel, initrd, sha256 };
}

export interface Checksum {
  sha256: string;
  /** Base name of the file the line is for; undefined: the root file system image. */
  file: string | undefined;
}

/** `sha256sum` output (`HASH  NAME` or `HASH *NAME`), or just a hash (for the root image). */
export function parseSha256File(text: string, source: string): Checksum[] {
  const sums: Checksum[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const m = /^([0-9a-fA-F]{64})(?:\s+\*?(.+))?$/.exec(line);
    if (!m?.[1])
      throw new EosError("VM", `${source}: not a sha256 line: ${JSON.stringify(line.slice(0, 80))}`);
    sums.push({ sha256: m[1].toLowerCase(), file: m[2] ? (m[2].split("/").pop() ?? m[2]) : undefined });
  }
  if (sums.length === 0) throw new EosError("VM", `${source}: the checksum file is empty`);
  return sums;
}

/**
 * Matches checksums to members: returns [member, expected sha256] pairs.
 * A named file that is not in the image is an error (a tampered or mixed-up
 * tarball), as is a member whose name appears twice with different sums.
 */
export function checksumPlan(sums: Checksum[], members: KisMembers, source: string): Array<[string, string]> {
  const byBase = new Map<string, string>();
  for (const m of [members.rootfs, members.kernel, members.initrd])
    if (m) byBase.set(m.split("/").pop() ?? m, m);
  const plan: Array<[string, string]> = [];
  for (const sum of sums) {
    const member = sum.file === undefined ? members.rootfs : byBase.get(sum.file);
    if (!member)
      throw new EosError("VM", `${source}: the checksum file names ${sum.file}, which is not in the image`);
    plan.push([member, sum.sha256]);
  }
  return plan;
}

export type SourceKind = { kind: "https" | "http" | "file"; url: string; path?: string };

/**
 * Where an image may come from: https always; http, file:// and plain paths
 * only with FLAKE_ALLOW_INSECURE_TRANSPORT set (as flake-pilot's pull).
 */
export function classifySource(source: string, what: string, allowInsecure: boolean): SourceKind {
  let kind: SourceKind;
  if (/^https:\/\//i.test(source)) kind = { kind: "https", url: source };
  else if (/^http:\/\//i.test(source)) kind = { kind: "http", url: source };
  else if (/^file:\/\//i.test(source))
    kind = { kind: "file", url: source, path: decodeURIComponent(new URL(source).pathname) };
  else if (source.startsWith("/")) kind = { kind: "file", url: `file://${encodeURI(source)}`, path: source };
  else {
    throw new EosError(
      "USAGE",
      `${what} ${JSON.stringify(source)} is neither an https:// URL nor an absolute path`,
    );
  }
  if (kind.kind !== "https" && !allowInsecure) {
    throw new EosError("REFUSED", `${what} ${source}: only https sources are allowed`, {
      hint: "set FLAKE_ALLOW_INSECURE_TRANSPORT=1 to pull from http, file:// or a local path",
    });
  }
  return kind;
}
