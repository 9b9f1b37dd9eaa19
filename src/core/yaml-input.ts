/**
 * YAML text → plain data, for every config file a command reads
 * (os-update.yml, image descriptions, flakes.yml, flake files and their
 * NAME.d fragments). Whatever the text, the result is plain data or a CONFIG
 * error naming the file:
 *
 * - a file larger than MAX_YAML_BYTES is refused before it is parsed (parse
 *   time grows faster than the size);
 * - duplicate keys are found here in linear time (the library's own check
 *   compares every key with every other);
 * - alias errors (unresolved, circular, an alias bomb) and keys that are
 *   lists or mappings are YAML errors, not crashes;
 * - `__proto__`, `constructor` and `prototype` are refused as keys, so that
 *   no merge or schema lookup downstream can reach an object's prototype.
 */
import { LineCounter, isScalar, parseDocument, visit } from "yaml";
import { EosError } from "./errors.ts";

/** Largest config or flake file accepted: 1 MiB (real ones are a few KiB). */
export const MAX_YAML_BYTES = 1024 * 1024;
/** Deepest nesting of lists and mappings accepted. */
export const MAX_YAML_DEPTH = 64;
/** Keys that name an object's prototype machinery, refused in every config file. */
export const FORBIDDEN_KEYS: ReadonlySet<string> = new Set(["__proto__", "constructor", "prototype"]);

export function isForbiddenKey(key: string): boolean {
  return FORBIDDEN_KEYS.has(key);
}

function keyPath(parent: string, key: string | number): string {
  if (typeof key === "number") return `${parent}[${key}]`;
  return parent ? `${parent}.${key}` : key;
}

function firstLine(message: string): string {
  return message.split("\n")[0] ?? "parse error";
}

/** Parses one YAML document into plain data (objects, arrays, scalars; `null` for an empty file). */
export function parseYamlData(text: string, file: string): unknown {
  const bytes = Buffer.byteLength(text, "utf8");
  if (bytes > MAX_YAML_BYTES) {
    throw new EosError(
      "CONFIG",
      `${file}: ${bytes} bytes, larger than the limit of ${MAX_YAML_BYTES} bytes (1 MiB) for a config file`,
      { hint: "config and flake files are small: is this the right file?" },
    );
  }
  const lineCounter = new LineCounter();
  const invalid = (message: string, offset?: number): EosError => {
    const line = offset === undefined ? undefined : lineCounter.linePos(offset).line;
    return new EosError(
      "CONFIG",
      `${file}: invalid YAML${line ? ` at line ${line}` : ""}: ${firstLine(message)}`,
    );
  };
  let data: unknown;
  try {
    const doc = parseDocument(text, {
      uniqueKeys: false,
      lineCounter,
      resolveKnownTags: false,
      prettyErrors: false,
    });
    const first = doc.errors[0];
    if (first) throw invalid(first.message, first.pos[0]);
    visit(doc, {
      Map(_key, map) {
        const seen = new Set<string>();
        for (const pair of map.items) {
          const key: unknown = pair.key;
          const offset = (key as { range?: [number, number, number] } | null)?.range?.[0];
          if (key !== null && !isScalar(key))
            throw invalid("a key must be a plain value, not a list or mapping", offset);
          const name = String(isScalar(key) ? key.value : null);
          if (seen.has(name))
            throw invalid(`Map keys must be unique (${JSON.stringify(name)} appears twice)`, offset);
          seen.add(name);
        }
      },
    });
    data = doc.toJS({ maxAliasCount: 100 });
  } catch (error) {
    if (error instanceof EosError) throw error;
    // The library throws for alias errors (unresolved, an alias bomb) and may overflow the stack.
    throw invalid(error instanceof Error ? error.message : String(error));
  }
  checkPlainData(data, file, "", [], 0);
  return data;
}

/** Plain objects, arrays and scalars only; no forbidden key, no cycle, bounded depth. */
function checkPlainData(
  value: unknown,
  file: string,
  path: string,
  ancestors: object[],
  depth: number,
): void {
  if (typeof value !== "object" || value === null) return;
  const fail = (message: string): never => {
    throw new EosError("CONFIG", `${file}: ${path || "(top level)"}: ${message}`);
  };
  if (ancestors.includes(value)) fail("an alias refers to a list or mapping that contains it");
  if (depth >= MAX_YAML_DEPTH) fail(`nested deeper than ${MAX_YAML_DEPTH} levels`);
  const inner = [...ancestors, value];
  if (Array.isArray(value)) {
    value.forEach((item, i) => checkPlainData(item, file, keyPath(path, i), inner, depth + 1));
    return;
  }
  const proto: unknown = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) fail("only plain values, lists and mappings are allowed");
  for (const key of Object.keys(value)) {
    if (isForbiddenKey(key)) {
      throw new EosError("CONFIG", `${file}: key ${keyPath(path, key)} is not allowed`, {
        hint: `${[...FORBIDDEN_KEYS].join(", ")} cannot be used as keys`,
      });
    }
    checkPlainData((value as Record<string, unknown>)[key], file, keyPath(path, key), inner, depth + 1);
  }
}
