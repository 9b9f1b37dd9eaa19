/**
 * fast-check arbitraries shared by the fuzz tests (test/unit/fuzz-*.test.ts)
 * and the long campaigns (bench/fuzz.ts): valid inputs of each format, and
 * mutations of them that reach past the first check.
 */
import fc from "fast-check";
import { stringify } from "yaml";
import { PartitionType, type GptPartition, type GptTable } from "../../src/core/gpt.ts";
import type { Manifest } from "../../src/core/manifest.ts";

// ---------------------------------------------------------------- text

/** Any UTF-16 code unit, lone surrogates included. */
export const codeUnit = fc.integer({ min: 0, max: 0xffff }).map((n) => String.fromCharCode(n));

/** Strings mixing ASCII, any Unicode and lone surrogates. */
export const anyString = (maxLength = 40) =>
  fc.oneof(
    fc.string({ maxLength }),
    fc.string({ unit: "binary", maxLength }),
    fc.string({ unit: codeUnit, maxLength }),
  );

/** Keys a hostile config may use: prototype names and JavaScript's inherited ones. */
export const hostileKey = fc.constantFrom(
  "__proto__",
  "constructor",
  "prototype",
  "toString",
  "hasOwnProperty",
  "valueOf",
  "__defineGetter__",
);

/** YAML fragments that exercise the parser's less common paths. */
export const yamlToken = fc.constantFrom(
  "*a",
  "&a ",
  "<<: *a",
  "!!binary ",
  "!!set ",
  "!!omap ",
  "!!timestamp ",
  "? ",
  "{",
  "}",
  "[",
  "]",
  ": ",
  "- ",
  "\n",
  "\n  ",
  "\t",
  "'",
  '"',
  "#",
  "---\n",
  "...\n",
  "%YAML 1.1\n",
  "~",
  "null",
  "1e400",
  "0x1F",
  "__proto__: ",
  "constructor: ",
);

/** Mutates text: splices tokens, random characters, deletions and truncation. */
export function mutatedText(base: fc.Arbitrary<string>): fc.Arbitrary<string> {
  const edit = fc.record({
    at: fc.nat(),
    del: fc.nat({ max: 8 }),
    insert: fc.oneof(yamlToken, anyString(6)),
  });
  return fc.tuple(base, fc.array(edit, { maxLength: 6 })).map(([text, edits]) => {
    let out = text;
    for (const e of edits) {
      const at = out.length === 0 ? 0 : e.at % (out.length + 1);
      out = out.slice(0, at) + e.insert + out.slice(at + e.del);
    }
    return out;
  });
}

/** Random nested YAML-able data whose keys come from `keys` (plus hostile ones). */
export function yamlData(keys: string[], depth = 3): fc.Arbitrary<unknown> {
  const key = fc.oneof(
    { weight: 8, arbitrary: fc.constantFrom(...keys) },
    { weight: 1, arbitrary: hostileKey },
  );
  const scalar = fc.oneof(
    fc.constantFrom(null, true, false, 0, 1, -1, 3, 128, 65535, 1.5, "", "/usr/bin/x", "EOS", "http://h/x"),
    fc.string({ maxLength: 12 }),
    fc.integer(),
  );
  const { value } = fc.letrec<{ value: unknown }>((tie) => ({
    value: fc.oneof(
      { depthSize: "small", maxDepth: depth },
      scalar,
      fc.array(tie("value"), { maxLength: 3 }),
      fc.dictionary(key, tie("value"), { maxKeys: 4 }),
    ),
  }));
  return value;
}

/** YAML text of random data, sometimes with prototype keys as real (own) keys. */
export function yamlDocument(keys: string[], depth = 3): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 3, arbitrary: yamlData(keys, depth).map((d) => stringify(d)) },
    { weight: 2, arbitrary: mutatedText(yamlData(keys, depth).map((d) => stringify(d))) },
    {
      weight: 1,
      arbitrary: fc
        .array(fc.oneof(yamlToken, fc.constantFrom(...keys)), { maxLength: 20 })
        .map((a) => a.join("")),
    },
  );
}

/** Alias bombs, cycles and unresolved aliases. */
export const aliasTrouble = fc.oneof(
  fc.constant("a: *x\n"),
  fc.constant("a: &a [*a]\n"),
  fc.constant("a: &a {b: *a}\n"),
  fc.integer({ min: 2, max: 12 }).map((levels) => {
    const lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"];
    for (let i = 1; i < levels; i++)
      lines.push(
        `l${i}: &l${i} [${Array(9)
          .fill(`*l${i - 1}`)
          .join(", ")}]`,
      );
    return `${lines.join("\n")}\n`;
  }),
);

// ---------------------------------------------------------------- GPT

const guid = fc.uuid().map((u) => u.toUpperCase());
const nonZeroGuid = guid.filter((g) => g !== "00000000-0000-0000-0000-000000000000");

/** A GPT label as the codec accepts it: ≤ 36 UTF-16 units, no NUL, no lone surrogate. */
export const gptLabel = fc
  .oneof(fc.string({ maxLength: 36 }), fc.string({ unit: "binary", maxLength: 18 }))
  .filter((s) => !s.includes("\0") && s.length <= 36);

export interface DiskWithTable {
  diskSize: number;
  table: GptTable;
}

/** A valid table on a small disk: any entry shape the spec allows, disjoint partitions. */
export const gptDisk: fc.Arbitrary<DiskWithTable> = fc
  .record({
    entryCount: fc.constantFrom(4, 16, 56, 128),
    entrySize: fc.constantFrom(128, 256, 512),
    extraSectors: fc.integer({ min: 8, max: 2048 }),
  })
  .chain(({ entryCount, entrySize, extraSectors }) => {
    const arraySectors = Math.ceil((entryCount * entrySize) / 512);
    const firstUsableLba = 2 + arraySectors;
    const totalSectors = 2 * (2 + arraySectors) + extraSectors;
    const lastUsableLba = totalSectors - 2 - arraySectors;
    const maxParts = Math.min(entryCount, 8);
    return fc
      .record({
        diskGuid: guid,
        cuts: fc.uniqueArray(fc.integer({ min: firstUsableLba, max: lastUsableLba }), {
          maxLength: 2 * maxParts,
        }),
        numbers: fc.shuffledSubarray(
          Array.from({ length: entryCount }, (_, i) => i + 1),
          { minLength: maxParts, maxLength: maxParts },
        ),
        parts: fc.array(
          fc.record({
            typeGuid: fc.oneof(fc.constantFrom(...Object.values(PartitionType)), nonZeroGuid),
            uniqueGuid: guid,
            attributes: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
            name: gptLabel,
          }),
          { minLength: maxParts, maxLength: maxParts },
        ),
      })
      .map(({ diskGuid, cuts, numbers, parts }) => {
        const sorted = [...cuts].sort((a, b) => a - b);
        const partitions: GptPartition[] = [];
        for (let i = 0; i + 1 < sorted.length; i += 2) {
          const p = parts[i / 2] as (typeof parts)[number];
          partitions.push({
            number: numbers[i / 2] as number,
            ...p,
            firstLba: sorted[i] as number,
            lastLba: sorted[i + 1] as number,
          });
        }
        partitions.sort((a, b) => a.number - b.number);
        const table: GptTable = {
          sectorSize: 512,
          diskGuid,
          firstUsableLba,
          lastUsableLba,
          entryCount,
          entrySize,
          partitions,
        };
        return { diskSize: totalSectors * 512, table };
      });
  });

/** Values for header fields that sit on or past a boundary. */
export const edgeU32 = fc.oneof(
  fc.constantFrom(
    0,
    1,
    2,
    4,
    33,
    34,
    127,
    128,
    129,
    136,
    255,
    256,
    512,
    4096,
    8192,
    65535,
    2 ** 31,
    2 ** 32 - 1,
  ),
  fc.nat({ max: 2 ** 32 - 1 }),
);
export const edgeU64 = fc.oneof(
  fc.constantFrom(
    0n,
    1n,
    2n,
    3n,
    33n,
    34n,
    2047n,
    2048n,
    2n ** 53n - 1n,
    2n ** 53n,
    2n ** 63n,
    2n ** 64n - 1n,
  ),
  fc.bigInt({ min: 0n, max: 1n << 20n }),
  fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
);

export interface GptDamage {
  header: Partial<Record<"firstUsableLba" | "lastUsableLba" | "entriesLba", bigint>> &
    Partial<Record<"entryCount" | "entrySize", number>>;
  /** Structured edits of entries: LBAs set to a boundary of the table, a lone surrogate in a label, a used type. */
  entries: Array<{ entry: number; field: "firstLba" | "lastLba" | "name" | "type"; pick: number }>;
  bytes: Array<{ at: number; value: number }>;
  reseal: boolean;
  sides: Array<"primary" | "backup">;
}

/** Damage to a written table: header fields set to edge values, random bytes, CRCs re-sealed or not. */
export const gptDamage: fc.Arbitrary<GptDamage> = fc.record({
  // Mostly no header edit, so that damaged entries reach the reader's entry checks.
  header: fc.oneof(
    { weight: 4, arbitrary: fc.constant({}) },
    {
      weight: 2,
      arbitrary: fc.oneof(
        edgeU64.map((v) => ({ firstUsableLba: v })),
        edgeU64.map((v) => ({ lastUsableLba: v })),
        edgeU64.map((v) => ({ entriesLba: v })),
        edgeU32.map((v) => ({ entryCount: v })),
        edgeU32.map((v) => ({ entrySize: v })),
      ),
    },
    {
      weight: 1,
      arbitrary: fc.record(
        {
          firstUsableLba: edgeU64,
          lastUsableLba: edgeU64,
          entriesLba: edgeU64,
          entryCount: edgeU32,
          entrySize: edgeU32,
        },
        { requiredKeys: [] },
      ),
    },
  ),
  entries: fc.array(
    fc.record({
      entry: fc.nat({ max: 7 }),
      field: fc.constantFrom("firstLba" as const, "lastLba" as const, "name" as const, "type" as const),
      pick: fc.nat(),
    }),
    { maxLength: 3 },
  ),
  bytes: fc.array(fc.record({ at: fc.nat(), value: fc.nat({ max: 255 }) }), { maxLength: 8 }),
  reseal: fc.boolean(),
  sides: fc.subarray(["primary", "backup"] as Array<"primary" | "backup">, { minLength: 1 }),
});

// ---------------------------------------------------------------- manifests

const sha = fc.stringMatching(/^[0-9a-f]{64}$/);

export const manifest: fc.Arbitrary<Manifest> = fc.record(
  {
    schema: fc.constant(1 as const),
    name: fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._+-]{0,30}$/),
    version: fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._+~-]{0,20}$/),
    architecture: fc.constantFrom("x86_64", "aarch64"),
    created: fc
      .date({
        min: new Date("2000-01-01T00:00:00Z"),
        max: new Date("2099-12-31T23:59:59Z"),
        noInvalidDate: true,
      })
      .map((d) => d.toISOString()),
    partitions: fc.record(
      {
        root: fc.record(
          {
            label: fc.constant("p.lxreadonly"),
            size: fc.integer({ min: 1, max: 2 ** 40 }),
            sha256: sha,
          },
          { noNullPrototype: true },
        ),
        firmware: fc.record(
          {
            label: fc.constant("p.UEFI"),
            size: fc.integer({ min: 1, max: 2 ** 30 }),
            sha256: sha,
          },
          { noNullPrototype: true },
        ),
      },
      { requiredKeys: ["root"], noNullPrototype: true },
    ),
  },
  { noNullPrototype: true },
);

/** JSON-shaped values that look a bit like a manifest. */
export const manifestLikeJson = fc.oneof(
  fc.jsonValue(),
  yamlData([
    "schema",
    "name",
    "version",
    "architecture",
    "created",
    "partitions",
    "root",
    "label",
    "size",
    "sha256",
  ]),
);

/** Byte edits: flips, insertions, deletions, truncation. */
export function mutatedBytes(base: fc.Arbitrary<Buffer>): fc.Arbitrary<Buffer> {
  const edit = fc.record({
    kind: fc.constantFrom("flip", "insert", "delete", "truncate"),
    at: fc.nat(),
    value: fc.integer({ min: 1, max: 255 }),
  });
  return fc.tuple(base, fc.array(edit, { minLength: 1, maxLength: 4 })).map(([buf, edits]) => {
    let out = Buffer.from(buf);
    for (const e of edits) {
      const at = out.length === 0 ? 0 : e.at % out.length;
      if (e.kind === "flip" && out.length > 0) out[at] = (out[at] as number) ^ e.value;
      if (e.kind === "insert")
        out = Buffer.concat([out.subarray(0, at), Buffer.from([e.value]), out.subarray(at)]);
      if (e.kind === "delete") out = Buffer.concat([out.subarray(0, at), out.subarray(at + 1)]);
      if (e.kind === "truncate") out = out.subarray(0, at);
    }
    return out;
  });
}

// ---------------------------------------------------------------- small grammars

/** Words the forced-command grammar knows, and a few it must refuse. */
export const commandWord = fc.oneof(
  fc.constantFrom(
    "sudo",
    "cat",
    "test",
    "-e",
    "-f",
    "eos-read",
    "root",
    "firmware",
    "manifest",
    "signature",
    "0",
    "12345",
    "/srv/eos/images/",
    "/srv/eos/images",
    "/var/lib/os-update/images/",
    "/srv/eos",
    "EOS.x86_64",
    ".raw",
    ".raw.dev",
    ".raw.firmware",
    ".manifest.json",
    ".manifest.json.sig",
    "..",
    "/",
    "./",
    "%2e%2e",
    "-",
  ),
  fc.stringMatching(/^[A-Za-z0-9 ._/+@=-]{0,12}$/),
  anyString(4),
);

/** Image names a path may carry: published ones and ones that must be refused. */
const pathName = fc.oneof(
  fc.constantFrom(
    "EOS",
    "EOS.x86_64-AB",
    ".hidden",
    "-rf",
    "+x",
    "a..b",
    "..",
    ".",
    "",
    "a/b",
    "x".repeat(129),
    "EOS/..",
    "%2e",
  ),
  fc.stringMatching(/^[A-Za-z0-9._+@=-]{0,10}$/),
);

/** Well-formed commands with a path: a verb, a directory, a name and a suffix. */
const pathCommand = fc
  .tuple(
    fc.constantFrom("", "sudo "),
    fc.constantFrom("cat ", "test -e ", "test -f ", "eos-read "),
    fc.constantFrom(
      "/srv/eos/images/",
      "/var/lib/os-update/images/",
      "/srv/eos/",
      "/srv/eos/images//",
      "",
      "/",
    ),
    pathName,
    fc.constantFrom(
      ".raw.dev",
      ".raw.firmware",
      ".manifest.json",
      ".manifest.json.sig",
      ".raw",
      "",
      " root",
      " root 12",
    ),
  )
  .map((parts) => parts.join(""));

export const forcedCommand = fc.oneof(
  pathCommand,
  fc
    .array(commandWord, { maxLength: 8 })
    .chain((words) => fc.constantFrom(" ", "", "  ").map((sep) => words.join(sep))),
);

export const rangeHeader = fc.oneof(
  fc.nat({ max: 20 }).map((n) => `bytes=-${n}`),
  fc
    .tuple(
      fc.constantFrom("bytes=", "Bytes=", "bytes = ", "items=", ""),
      fc.oneof(
        fc.constant(""),
        fc.nat().map(String),
        fc.constantFrom("99999999999999999999", "-1", "1e3", " 5"),
      ),
      fc.constantFrom("-", "--", "", ","),
      fc.oneof(fc.constant(""), fc.nat().map(String), fc.constantFrom("99999999999999999999", "0", "x")),
      fc.constantFrom("", ",0-1", " ", "\t"),
    )
    .map((parts) => parts.join("")),
  anyString(20),
);

/** Values that probe a field's check: separators, traversal, option-like and odd scalars. */
const probeValue = fc.oneof(
  fc.constantFrom(
    "",
    "..",
    "../x",
    "a/b",
    "-x",
    "--privileged",
    ".x",
    "a b",
    "x".repeat(200),
    "/",
    "%2e",
    "~",
    0,
    -1,
    1e21,
    true,
    null,
  ),
  anyString(20),
  fc.integer(),
);

/** The YAML text of `valid` with one value (at any depth) replaced by a probing value. */
export function mutatedData(valid: unknown): fc.Arbitrary<string> {
  const paths: Array<Array<string | number>> = [];
  const walk = (value: unknown, path: Array<string | number>) => {
    if (path.length > 0) paths.push(path);
    if (Array.isArray(value)) value.forEach((v, i) => walk(v, [...path, i]));
    else if (typeof value === "object" && value !== null)
      for (const [k, v] of Object.entries(value)) walk(v, [...path, k]);
  };
  walk(valid, []);
  return fc.tuple(fc.constantFrom(...paths), probeValue).map(([path, value]) => {
    const copy = structuredClone(valid) as Record<string | number, unknown>;
    let at: Record<string | number, unknown> = copy;
    for (const key of path.slice(0, -1)) at = at[key] as Record<string | number, unknown>;
    at[path[path.length - 1] as string | number] = value;
    return stringify(copy);
  });
}
