/**
 * The grammar of what a fleet key may ask over SSH. The command string comes
 * from the client (SSH_ORIGINAL_COMMAND) and is never given to a shell: it is
 * split on single spaces and must match one of these forms exactly.
 *
 *   [sudo] cat DIR/NAME.raw.dev              root stream (original client)
 *   [sudo] cat DIR/NAME.raw.firmware         firmware stream (original client)
 *   [sudo] cat DIR/NAME.manifest.json[.sig]  manifest, signatures
 *   [sudo] cat DIR/NAME[.raw]                the whole published disk image
 *                                            (the original `os-update --read NAME`)
 *   [sudo] test -e|-f DIR/NAME.raw[.dev|.firmware]   does the image exist
 *   eos-read NAME root|firmware|manifest|signature [OFFSET]   (resume from OFFSET)
 *   eos-read NAME root|firmware OFFSET END   bytes OFFSET to END (exclusive): not the zero tail
 *   eos-read NAME deltas                     the current version's delta index
 *   eos-read NAME delta FROM_SHA256          the delta to it from that root
 *   eos-read NAME chunks                     the current version's chunk index
 *
 * DIR must be the server's image directory or the original default.
 */
import { isSafeImageName } from "../image-name.ts";

export type RestrictedRequest =
  | {
      kind: "read";
      name: string;
      what: "root" | "firmware" | "manifest" | "signature" | "disk";
      offset: number;
      /** Where to stop (exclusive); the stream's end when absent. */
      end?: number | undefined;
    }
  | { kind: "test"; name: string }
  | { kind: "deltas"; name: string }
  | { kind: "chunks"; name: string }
  | { kind: "delta"; name: string; from: string };

export type ParseResult = { ok: true; request: RestrictedRequest } | { ok: false; reason: string };

export const MAX_COMMAND_LENGTH = 1024;

const SUFFIXES: Array<[string, "root" | "firmware" | "manifest" | "signature"]> = [
  [".raw.dev", "root"],
  [".raw.firmware", "firmware"],
  [".manifest.json.sig", "signature"],
  [".manifest.json", "manifest"],
];

function refuse(reason: string): ParseResult {
  return { ok: false, reason };
}

function splitPath(path: string, dirs: string[]): { name: string; rest: string } | undefined {
  for (const dir of dirs) {
    const prefix = dir.endsWith("/") ? dir : `${dir}/`;
    if (path.startsWith(prefix)) {
      const file = path.slice(prefix.length);
      if (file.includes("/")) return undefined;
      return { name: file, rest: file };
    }
  }
  return undefined;
}

export function parseRestrictedCommand(command: string | undefined, imageDirs: string[]): ParseResult {
  if (command === undefined || command.trim() === "") return refuse("no command given");
  if (command.length > MAX_COMMAND_LENGTH)
    return refuse(`command longer than ${MAX_COMMAND_LENGTH} characters`);
  if (!/^[A-Za-z0-9 ._/+@=-]+$/.test(command))
    return refuse("command contains characters that are not allowed");
  const words = command.split(" ");
  if (words.some((w) => w === "")) return refuse("command has empty words (double spaces)");
  if (words.some((w) => w.split("/").includes(".."))) return refuse("path traversal is not allowed");
  if (words[0] === "sudo") words.shift();
  const [verb, ...args] = words;

  if (verb === "eos-read") {
    const [name, what, offsetText, endText, ...extra] = args;
    if (name && (what === "deltas" || what === "chunks") && args.length === 2) {
      if (!isSafeImageName(name)) return refuse("invalid image name");
      return { ok: true, request: { kind: what, name } };
    }
    if (name && what === "delta" && args.length === 3) {
      if (!isSafeImageName(name)) return refuse("invalid image name");
      if (!/^[0-9a-f]{64}$/.test(offsetText ?? "")) return refuse("FROM_SHA256 must be a sha256 in hex");
      return { ok: true, request: { kind: "delta", name, from: offsetText as string } };
    }
    if (extra.length > 0 || !name || !what)
      return refuse("usage: eos-read NAME root|firmware|manifest|signature [OFFSET [END]]");
    if (!isSafeImageName(name)) return refuse("invalid image name");
    if (what !== "root" && what !== "firmware" && what !== "manifest" && what !== "signature") {
      return refuse(`unknown stream ${what}`);
    }
    const count = (text: string | undefined) => (/^\d{1,15}$/.test(text ?? "") ? Number(text) : NaN);
    const offset = offsetText === undefined ? 0 : count(offsetText);
    if (Number.isNaN(offset)) return refuse("OFFSET must be a byte count");
    if (endText === undefined) return { ok: true, request: { kind: "read", name, what, offset } };
    if (what !== "root" && what !== "firmware")
      return refuse("END is only for the root and firmware streams");
    const end = count(endText);
    if (Number.isNaN(end) || end < offset) return refuse("END must be a byte count not below OFFSET");
    return { ok: true, request: { kind: "read", name, what, offset, end } };
  }

  if (verb === "cat") {
    if (args.length !== 1) return refuse("cat takes exactly one published image path");
    const located = splitPath(args[0] as string, imageDirs);
    if (!located) return refuse("only files in the image directory can be read");
    for (const [suffix, what] of SUFFIXES) {
      if (located.rest.endsWith(suffix)) {
        const name = located.rest.slice(0, -suffix.length);
        if (!isSafeImageName(name)) return refuse("invalid image name");
        return { ok: true, request: { kind: "read", name, what, offset: 0 } };
      }
    }
    // The whole disk image, read-only, of a published image only (the answer checks that it is published).
    const disk = located.rest.replace(/\.raw$/, "");
    if (isSafeImageName(disk))
      return { ok: true, request: { kind: "read", name: disk, what: "disk", offset: 0 } };
    return refuse(
      "only NAME, NAME.raw, NAME.raw.dev, NAME.raw.firmware and NAME.manifest.json[.sig] can be read",
    );
  }

  if (verb === "test") {
    const [flag, path, ...extra] = args;
    if (extra.length > 0 || (flag !== "-e" && flag !== "-f") || !path) return refuse("usage: test -e PATH");
    const located = splitPath(path, imageDirs);
    if (!located) return refuse("only files in the image directory can be tested");
    const m = /^(.+?)\.raw(\.dev|\.firmware)?$/.exec(located.rest);
    if (!m || !isSafeImageName(m[1] as string)) return refuse("only NAME.raw[.dev|.firmware] can be tested");
    return { ok: true, request: { kind: "test", name: m[1] as string } };
  }

  return refuse(`command ${JSON.stringify(verb ?? "")} is not allowed`);
}
