/**
 * The fuzzed properties, shared by the unit tier (test/unit/fuzz-*.test.ts,
 * a few hundred runs each) and the long campaigns (bench/fuzz.ts). Every
 * property says what users rely on: a parser returns a valid value or throws
 * an EosError with its stable code — never another exception, never a
 * prototype change, never a value outside what its checks promise.
 */
import { generateKeyPairSync } from "node:crypto";
import { crc32 } from "node:zlib";
import { join, resolve } from "node:path";
import assert from "node:assert/strict";
import fc from "fast-check";
import { parse as parseYaml } from "yaml";
import { EosError, type ErrorCode } from "../../src/core/errors.ts";
import {
  decodeEntries,
  decodeHeader,
  readGpt,
  isValidEntrySize,
  MAX_ENTRY_ARRAY_BYTES,
  type BlockSource,
  type GptTable,
} from "../../src/core/gpt.ts";
import { encodeGpt } from "../../src/core/gpt-write.ts";
import {
  decodeManifest,
  decodeSignatures,
  encodeManifest,
  encodeSignatures,
  keyId,
  signManifest,
  verifyManifestSignature,
} from "../../src/core/manifest.ts";
import {
  deviceConfigSchema,
  parseYamlConfig,
  serverConfigSchema,
  type DeviceConfig,
  type ServerConfig,
} from "../../src/core/config.ts";
import { isSafeImageName } from "../../src/core/image-name.ts";
import {
  parseContainerFlake,
  parseFlakesConfig,
  parseYamlMapping,
} from "../../src/core/flakes/flake-yaml.ts";
import { vmFlakeFromDocuments } from "../../src/core/flakes/vm.ts";
import { decodeGrubenv, encodeGrubenv, GRUBENV_SIZE } from "../../src/core/update/grubenv.ts";
import {
  commitSlot,
  markInvalid,
  markTrial,
  otherSlot,
  readBootState,
  rollbackTo,
  type Slot,
} from "../../src/core/update/bootctl.ts";
import { parseRestrictedCommand } from "../../src/core/server/restricted-command.ts";
import { parseRange } from "../../src/core/http-range.ts";
import { parseImageDescription } from "../../src/core/image/description.ts";
import { memDisk } from "./memdisk.ts";
import { HEADER, resealHeader } from "./gpt-bytes.ts";
import {
  aliasTrouble,
  anyString,
  forcedCommand,
  gptDamage,
  gptDisk,
  manifest,
  manifestLikeJson,
  mutatedBytes,
  mutatedData,
  mutatedText,
  rangeHeader,
  yamlDocument,
  type GptDamage,
} from "./arbitraries.ts";

export interface FuzzParams {
  numRuns: number;
  seed?: number;
  /** Per-run limit for async properties (ms). */
  timeout?: number;
  /** Whole-property limit (ms); with markInterruptAsFailure a slow or stuck property fails. */
  interruptAfterTimeLimit?: number;
  markInterruptAsFailure?: boolean;
}

export interface FuzzProperty {
  name: string;
  /** fast-check's run of the property; `failed` and the counterexample are in the details. */
  check(params: FuzzParams): Promise<fc.RunDetails<unknown>>;
}

function property<Ts>(name: string, make: () => fc.IRawProperty<Ts, boolean>): FuzzProperty {
  return {
    name,
    check: async (params) =>
      (await fc.check(make(), params as fc.Parameters<Ts>)) as unknown as fc.RunDetails<unknown>,
  };
}

/** Runs `fn`; an EosError with one of `codes` is a clean refusal, anything else fails the property. */
export function typed<T>(codes: ErrorCode[], fn: () => T): T | EosError {
  try {
    return fn();
  } catch (error) {
    if (error instanceof EosError && codes.includes(error.code)) return error;
    throw error;
  }
}

export async function typedAsync<T>(codes: ErrorCode[], fn: () => Promise<T>): Promise<T | EosError> {
  try {
    return await fn();
  } catch (error) {
    if (error instanceof EosError && codes.includes(error.code)) return error;
    throw error;
  }
}

const OBJECT_PROTO_NAMES = Object.getOwnPropertyNames(Object.prototype).sort().join(",");

/** Object.prototype as it was when this module loaded, and {} still inherits from it. */
export function assertPrototypesIntact(): void {
  assert.equal(Object.getOwnPropertyNames(Object.prototype).sort().join(","), OBJECT_PROTO_NAMES);
  assert.equal(Object.getPrototypeOf({}), Object.prototype);
}

function assertNoPrototypeKeys(value: unknown, seen = new Set<unknown>()): void {
  if (typeof value !== "object" || value === null || seen.has(value)) return;
  seen.add(value);
  const proto: unknown = Object.getPrototypeOf(value);
  assert.ok(proto === null || proto === Object.prototype || proto === Array.prototype, "plain data only");
  for (const key of Object.keys(value)) {
    assert.ok(!["__proto__", "constructor", "prototype"].includes(key), `no ${key} key in parsed data`);
    assertNoPrototypeKeys((value as Record<string, unknown>)[key], seen);
  }
}

// ---------------------------------------------------------------- GPT

function recordingDisk(size: number): ReturnType<typeof memDisk> & { largest: number } {
  const disk = memDisk(size);
  const out = Object.assign(disk, { largest: 0 });
  const read = disk.read;
  out.read = (offset: number, length: number) => {
    out.largest = Math.max(out.largest, length);
    return read(offset, length);
  };
  return out;
}

function damage(buf: Buffer, d: GptDamage, table: GptTable): void {
  const sectors = buf.length / 512;
  if (!d.reseal) {
    // Raw damage anywhere in the GPT areas (the first and last 34 sectors): CRCs catch it.
    for (const b of d.bytes) {
      const span = Math.min(34, sectors) * 512;
      const at = b.at % (2 * span);
      buf[at < span ? at : buf.length - (at - span) - 1] = b.value;
    }
    return;
  }
  // Damage with valid CRCs: only the reader's own checks stand between it and the caller.
  const boundaries = [0, 1, table.firstUsableLba - 1, table.firstUsableLba, table.lastUsableLba];
  boundaries.push(table.lastUsableLba + 1, sectors - 1, sectors);
  for (const p of table.partitions)
    boundaries.push(p.firstLba - 1, p.firstLba, p.firstLba + 1, p.lastLba - 1, p.lastLba, p.lastLba + 1);
  const lbas = boundaries.filter((n) => n >= 0);
  for (const side of d.sides) {
    const lba = side === "primary" ? 1 : sectors - 1;
    const h = buf.subarray(lba * 512, (lba + 1) * 512);
    const arrayAt =
      table.sectorSize *
      (side === "primary" ? 2 : sectors - 1 - Math.ceil((table.entryCount * table.entrySize) / 512));
    const array = buf.subarray(arrayAt, arrayAt + table.entryCount * table.entrySize);
    for (const e of d.entries) {
      // LBA and label edits hit used entries; a type edit may bring an unused one to life.
      const used = table.partitions[e.entry % Math.max(1, table.partitions.length)];
      const index = used && e.field !== "type" ? used.number - 1 : e.entry % table.entryCount;
      const at = index * table.entrySize;
      if (e.field === "firstLba" || e.field === "lastLba")
        array.writeBigUInt64LE(
          BigInt(lbas[e.pick % lbas.length] as number),
          at + (e.field === "firstLba" ? 32 : 40),
        );
      if (e.field === "name") array.writeUInt16LE(0xd800 + (e.pick % 0x800), at + 56 + 2 * (e.pick % 36));
      if (e.field === "type") array.fill(0x11, at, at + 16);
    }
    for (const b of d.bytes) if (array.length > 0) array[b.at % array.length] = b.value;
    const u64 = {
      firstUsableLba: HEADER.firstUsableLba,
      lastUsableLba: HEADER.lastUsableLba,
      entriesLba: HEADER.entriesLba,
    };
    for (const [k, at] of Object.entries(u64)) {
      const v = d.header[k as keyof typeof u64];
      if (v !== undefined) h.writeBigUInt64LE(v, at);
    }
    if (d.header.entryCount !== undefined) h.writeUInt32LE(d.header.entryCount, HEADER.entryCount);
    if (d.header.entrySize !== undefined) h.writeUInt32LE(d.header.entrySize, HEADER.entrySize);
    // The array CRC as the header now describes it, where that array lies on the disk.
    const newAt = Number(h.readBigUInt64LE(HEADER.entriesLba)) * 512;
    const newBytes = h.readUInt32LE(HEADER.entryCount) * h.readUInt32LE(HEADER.entrySize);
    if (newBytes <= 4 * 1024 * 1024 && newAt + newBytes <= buf.length)
      h.writeUInt32LE(crc32(buf.subarray(newAt, newAt + newBytes)), HEADER.entriesCrc);
    resealHeader(h);
  }
}

/** What a table the reader returned must satisfy, whatever the disk held. */
function assertSaneTable(table: GptTable, diskSize: number, source: "primary" | "backup"): void {
  const sectors = Math.floor(diskSize / table.sectorSize);
  assert.ok(isValidEntrySize(table.entrySize));
  const headerLba = source === "primary" ? 1 : Math.floor(diskSize / table.sectorSize) - 1;
  assert.ok(
    headerLba < table.firstUsableLba || headerLba > table.lastUsableLba,
    "the header is outside the usable range",
  );
  assert.ok(table.entryCount * table.entrySize <= MAX_ENTRY_ARRAY_BYTES);
  assert.ok(
    table.firstUsableLba >= 1 && table.firstUsableLba <= table.lastUsableLba && table.lastUsableLba < sectors,
  );
  const sorted = [...table.partitions].sort((a, b) => a.firstLba - b.firstLba);
  sorted.forEach((p, i) => {
    assert.ok(
      p.firstLba >= table.firstUsableLba && p.firstLba <= p.lastLba && p.lastLba <= table.lastUsableLba,
    );
    assert.ok(p.number >= 1 && p.number <= table.entryCount);
    assert.equal(p.name, Buffer.from(p.name, "utf16le").toString("utf16le"), "well-formed label");
    assert.ok(!/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(p.name));
    const next = sorted[i + 1];
    if (next) assert.ok(next.firstLba > p.lastLba, "no overlap");
  });
}

const gptProperties: FuzzProperty[] = [
  property("gpt-roundtrip", () =>
    fc.asyncProperty(gptDisk, async ({ diskSize, table }) => {
      const disk = memDisk(diskSize);
      disk.apply(encodeGpt(table, diskSize));
      const read = await readGpt(disk);
      assert.deepEqual(read.problems, []);
      assert.equal(read.source, "primary");
      assert.deepEqual(read.table, table);
    }),
  ),
  property("gpt-damaged", () =>
    fc.asyncProperty(gptDisk, gptDamage, async ({ diskSize, table }, d) => {
      const disk = recordingDisk(diskSize);
      disk.apply(encodeGpt(table, diskSize));
      damage(disk.buf, d, table);
      const result = await typedAsync(["GPT"], () => readGpt(disk as BlockSource));
      assert.ok(disk.largest <= MAX_ENTRY_ARRAY_BYTES, `read ${disk.largest} bytes at once`);
      if (!(result instanceof EosError)) assertSaneTable(result.table, diskSize, result.source);
      // The decoders themselves, without readGpt's catch: GPT errors only.
      const sectors = diskSize / 512;
      for (const lba of [1, sectors - 1]) {
        const header = typed(["GPT"], () =>
          decodeHeader(disk.buf.subarray(lba * 512, (lba + 1) * 512), lba, sectors),
        );
        if (header instanceof EosError) continue;
        const at = header.entriesLba * 512;
        const array = disk.buf.subarray(at, at + header.entryCount * header.entrySize);
        typed(["GPT"], () => decodeEntries(array, header));
      }
    }),
  ),
  property("gpt-header-bytes", () =>
    fc.property(
      fc.uint8Array({ minLength: 0, maxLength: 600 }),
      fc.nat({ max: 4096 }),
      fc.nat({ max: 4096 }),
      (bytes, lba, sectors) => {
        const sector = Buffer.from(bytes);
        if (sector.length >= 8) sector.write("EFI PART", 0, "latin1");
        typed(["GPT"], () => decodeHeader(sector, lba, sectors));
      },
    ),
  ),
];

// ---------------------------------------------------------------- manifests

let keys:
  { privateKey: import("node:crypto").KeyObject; publicKey: import("node:crypto").KeyObject }[] | undefined;
function releaseKeys() {
  keys ??= [generateKeyPairSync("ed25519"), generateKeyPairSync("ed25519")];
  return keys;
}

const manifestProperties: FuzzProperty[] = [
  property("manifest-roundtrip", () =>
    fc.property(manifest, (m) => {
      const bytes = encodeManifest(m);
      assert.deepEqual(decodeManifest(bytes), m);
      assert.ok(encodeManifest(decodeManifest(bytes)).equals(bytes));
    }),
  ),
  property("manifest-decode", () =>
    fc.property(
      fc.oneof(
        mutatedBytes(manifest.map(encodeManifest)),
        manifestLikeJson.map((v) => Buffer.from(JSON.stringify(v) ?? "null")),
        fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)),
      ),
      (bytes) => {
        const result = typed(["MANIFEST"], () => decodeManifest(bytes, "m.json"));
        if (result instanceof EosError) {
          assert.match(result.message, /^m\.json: /);
          return;
        }
        // Accepted: it is exactly the canonical encoding of what was decoded.
        assert.ok(encodeManifest(result).equals(bytes));
      },
    ),
  ),
  property("manifest-signature", () =>
    fc.property(
      manifest,
      fc.nat(),
      fc.integer({ min: 1, max: 255 }),
      mutatedBytes(
        fc.constant(Buffer.from('{"signatures":[{"keyid":"' + "a".repeat(64) + '","sig":"AAAA"}]}')),
      ),
      (m, at, flip, sigDocBytes) => {
        const [signer, other] = releaseKeys() as [
          { privateKey: import("node:crypto").KeyObject; publicKey: import("node:crypto").KeyObject },
          { privateKey: import("node:crypto").KeyObject; publicKey: import("node:crypto").KeyObject },
        ];
        const bytes = encodeManifest(m);
        const doc = signManifest(bytes, [signer.privateKey]);
        const docBytes = encodeSignatures(doc);
        assert.equal(
          verifyManifestSignature(bytes, decodeSignatures(docBytes), [signer.publicKey]),
          keyId(signer.publicKey),
        );
        // Any other bytes: refused.
        const altered = Buffer.from(bytes);
        altered[at % altered.length] = (altered[at % altered.length] as number) ^ flip;
        const refused = typed(["SIGNATURE"], () => verifyManifestSignature(altered, doc, [signer.publicKey]));
        assert.ok(refused instanceof EosError, "a changed byte is refused");
        // Only a trusted key counts.
        assert.ok(
          typed(["SIGNATURE"], () => verifyManifestSignature(bytes, doc, [other.publicKey])) instanceof
            EosError,
        );
        // Random signature documents: decoded or refused, and never verify these bytes.
        const random = typed(["SIGNATURE"], () => decodeSignatures(sigDocBytes, "m.sig"));
        if (!(random instanceof EosError)) {
          assert.ok(
            typed(["SIGNATURE"], () => verifyManifestSignature(bytes, random, [signer.publicKey])) instanceof
              EosError,
          );
        }
      },
    ),
  ),
];

// ---------------------------------------------------------------- config

const DEVICE_KEYS = [
  "update",
  "server",
  "name",
  "pkey",
  "url",
  "token",
  "keys",
  "tries",
  "ca",
  "port",
  "known_hosts",
];
const SERVER_KEYS = [
  "update",
  "image",
  "name",
  "manifest",
  "signature",
  "interval",
  "insecure",
  "images_dir",
  "keys",
  "serve",
  "listen",
  "port",
  "cert",
  "key",
  "tokens_dir",
];
const FLAKES_KEYS = [
  "generic",
  "flakes_dir",
  "podman_ids_dir",
  "firecracker_ids_dir",
  "podman_storage_conf",
  "podman_pilot",
  "firecracker_pilot",
];
const CONTAINER_KEYS = [
  "container",
  "name",
  "target_app_path",
  "host_app_path",
  "base_container",
  "check_host_dependencies",
  "layers",
  "runtime",
  "runas",
  "resume",
  "attach",
  "podman",
  "include",
  "tar",
  "path",
];
const VM_KEYS = [
  "vm",
  "name",
  "target_app_path",
  "host_app_path",
  "base_vm",
  "layers",
  "runtime",
  "runas",
  "resume",
  "force_vsock",
  "firecracker",
  "boot_args",
  "mem_size_mib",
  "vcpu_count",
  "cache_type",
  "overlay_size",
  "rootfs_size",
  "include",
  "tar",
  "path",
];
const DESCRIPTION_KEYS = [
  "name",
  "version",
  "pretty_name",
  "architecture",
  "packages",
  "files",
  "services",
  "users",
  "root",
  "ssh_authorized_keys",
  "autologin_serial",
  "partitions",
  "esp",
  "spare",
  "filesystem",
  "compression",
  "eos",
  "node",
  "update",
  "url",
  "keys",
  "cmdline",
];

const IMAGE_REF = /^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$/;

const VALID_DEVICE =
  "update:\n  server: fleet@updates.example\n  name: EOS.x86_64-AB\n  url: https://updates.example:8443\n  tries: 3\n  keys: [/usr/share/eos/keys/release.pub]\n";
const VALID_SERVER =
  "update:\n  - image: https://origin.example/EOS.raw.xz\n    name: EOS.x86_64-AB.raw\n    interval: 15m\nimages_dir: /srv/eos/images\nkeys:\n  - /etc/eos/release.pub\nserve:\n  port: 8080\n  tokens_dir: /etc/eos/tokens\n";
const VALID_FLAKES = "generic:\n  flakes_dir: /usr/share/flakes\n  podman_ids_dir: ~\n";
const VALID_DESCRIPTION = "name: EOS\nversion: '1.0'\npackages: [podman]\npartitions:\n  root: 300M\n";

function yamlCheck(
  name: string,
  keys: string[],
  parse: (text: string, file: string) => unknown,
  valid: string,
  accepted: (value: never) => void = () => undefined,
): FuzzProperty {
  return property(name, () =>
    fc.property(
      fc.oneof(
        { weight: 3, arbitrary: yamlDocument(keys) },
        // A valid file and small edits of it, so that accepted files are checked too.
        { weight: 2, arbitrary: mutatedText(fc.constant(valid)) },
        { weight: 3, arbitrary: mutatedData(parseYaml(valid)) },
        { weight: 1, arbitrary: fc.constant(valid) },
        { weight: 1, arbitrary: aliasTrouble },
      ),
      (text) => {
        const result = typed(["CONFIG"], () => parse(text, "/etc/x.yml"));
        assertPrototypesIntact();
        if (result instanceof EosError) assert.match(result.message, /^\/etc\/x\.yml[: ]/);
        else {
          assertNoPrototypeKeys(result);
          accepted(result as never);
        }
      },
    ),
  );
}

const BASE_FLAKE = "container:\n  name: registry.example/app:1\n  host_app_path: /usr/bin/app\n";

const configProperties: FuzzProperty[] = [
  yamlCheck(
    "config-device",
    DEVICE_KEYS,
    (t, f) => parseYamlConfig(t, f, deviceConfigSchema),
    VALID_DEVICE,
    (c: DeviceConfig) =>
      assert.ok(isSafeImageName(c.update.name), "the image name reaches paths and URLs only when safe"),
  ),
  yamlCheck(
    "config-server",
    SERVER_KEYS,
    (t, f) => parseYamlConfig(t, f, serverConfigSchema),
    VALID_SERVER,
    (c: ServerConfig) => {
      for (const image of c.update) assert.ok(isSafeImageName(image.name), "image names are safe file names");
    },
  ),
  yamlCheck("config-flakes-yml", FLAKES_KEYS, parseFlakesConfig, VALID_FLAKES),
  yamlCheck("image-description", DESCRIPTION_KEYS, parseImageDescription, VALID_DESCRIPTION),
  property("flake-merge", () =>
    fc.property(
      fc.oneof(
        fc.constant(BASE_FLAKE),
        yamlDocument(CONTAINER_KEYS, 4),
        mutatedText(fc.constant(BASE_FLAKE)),
      ),
      fc.array(fc.oneof(yamlDocument(CONTAINER_KEYS, 4), aliasTrouble), { maxLength: 3 }),
      (main, fragments) => {
        const sources = [
          { file: "/f/app.yaml", text: main },
          ...fragments.map((text, i) => ({ file: `/f/app.d/${i}.yaml`, text })),
        ];
        const flake = typed(["CONFIG"], () => parseContainerFlake(sources));
        assertPrototypesIntact();
        if (flake instanceof EosError) {
          assert.match(flake.message, /^\/f\/app(\.d\/\d+)?\.yaml[: ]/);
          return;
        }
        // What reaches podman's argv was checked after the merge.
        assert.match(flake.name, IMAGE_REF);
        assert.ok(flake.hostAppPath.startsWith("/"));
        for (const layer of flake.layers) assert.match(layer, IMAGE_REF);
        if (flake.baseContainer !== undefined) assert.match(flake.baseContainer, IMAGE_REF);
      },
    ),
  ),
  property("vm-flake-merge", () =>
    fc.property(
      fc.array(fc.oneof(yamlDocument(VM_KEYS, 4), aliasTrouble), { minLength: 1, maxLength: 3 }),
      (texts) => {
        const result = typed(["CONFIG", "FLAKE", "VM", "USAGE"], () =>
          vmFlakeFromDocuments(
            texts.map((text, i) => ({
              file: `/f/vm${i}.yaml`,
              data: parseYamlMapping(text, `/f/vm${i}.yaml`),
            })),
          ),
        );
        assertPrototypesIntact();
        if (!(result instanceof EosError)) assertNoPrototypeKeys(result);
      },
    ),
  ),
];

// ---------------------------------------------------------------- boot control

const grubName = fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_]{0,15}$/);

const bootProperties: FuzzProperty[] = [
  property("grubenv-roundtrip", () =>
    fc.property(fc.array(fc.tuple(grubName, anyString(24)), { maxLength: 12 }), (pairs) => {
      const vars = new Map(pairs);
      const block = typed(["BOOT_CONTROL"], () => encodeGrubenv(vars));
      if (block instanceof EosError) return;
      assert.equal(block.length, GRUBENV_SIZE);
      assert.deepEqual(decodeGrubenv(block), vars);
    }),
  ),
  property("grubenv-decode", () =>
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 1100 }).map((a) => Buffer.from(a)),
        fc
          .uint8Array({ minLength: 999, maxLength: 999 })
          .map((a) => Buffer.concat([Buffer.from("# GRUB Environment Block\n"), Buffer.from(a)])),
      ),
      (block) => {
        const vars = typed(["BOOT_CONTROL"], () => decodeGrubenv(block, "grubenv"));
        if (vars instanceof EosError) return;
        typed(["BOOT_CONTROL"], () => readBootState(vars));
      },
    ),
  ),
  property("bootctl-sequence", () =>
    fc.property(fc.boolean(), fc.array(bootOp, { maxLength: 30 }), (initialRecord, ops) => {
      runBootModel(initialRecord, ops);
    }),
  ),
];

type BootOp =
  | { kind: "apply"; version: string; sha256: string; size: number; tries: number; cut: boolean }
  | { kind: "grub" }
  | { kind: "commit" }
  | { kind: "rollback" };

const bootOp: fc.Arbitrary<BootOp> = fc.oneof(
  fc.record({
    kind: fc.constant("apply" as const),
    version: fc.oneof(
      fc.stringMatching(/^[0-9]{1,2}\.[0-9]{1,2}\.[0-9]{1,2}$/),
      anyString(64).filter((s) => s.length > 0),
    ),
    sha256: fc.stringMatching(/^[0-9a-f]{64}$/),
    size: fc.integer({ min: 1, max: 2 ** 40 }),
    tries: fc.integer({ min: 0, max: 10 }),
    cut: fc.boolean(),
  }),
  fc.constant({ kind: "grub" as const }),
  fc.constant({ kind: "commit" as const }),
  fc.constant({ kind: "rollback" as const }),
);

const hasRecord = (vars: Map<string, string>, slot: Slot) =>
  Boolean(vars.get(`eos_${slot}_sha256`) && vars.get(`eos_${slot}_version`) && vars.get(`eos_${slot}_size`));

/**
 * A device through random updates, boots, commits and rollbacks, as os-update
 * and grub.cfg drive the transitions (docs/boot-control.md). After every step:
 * the block encodes, the default slot holds a verified record (or is the
 * initial A of an image built without one), a trial is never the default and
 * always has a record.
 */
function runBootModel(initialRecord: boolean, ops: BootOp[]): void {
  let vars = new Map<string, string>([
    ["eos_default", "A"],
    ["eos_trial", ""],
    ["eos_tries", "0"],
    ["eos_A_part", "gpt2"],
    ["eos_B_part", "gpt3"],
    ["eos_A_uuid", "A1A1A1A1-0000-4000-8000-000000000002"],
    ["eos_B_uuid", "A1A1A1A1-0000-4000-8000-000000000003"],
    ["eos_cmdline", "console=ttyS0 panic=10"],
  ]);
  if (initialRecord) {
    vars.set("eos_A_version", "1.0.0");
    vars.set("eos_A_sha256", "0".repeat(64));
    vars.set("eos_A_size", "1048576");
  }
  let running: Slot = "A";
  let commitUpdate = false;
  let aEverRewritten = false;
  /** Written to the ESP: encode, then read back as the next boot would. */
  const write = (next: Map<string, string>) => {
    const block = typed(["BOOT_CONTROL"], () => encodeGrubenv(next));
    if (block instanceof EosError) return false;
    vars = decodeGrubenv(block);
    return true;
  };
  const grubBoot = () => {
    const st = readBootState(vars);
    if (st.trial && st.tries > 0) {
      const next = new Map(vars);
      next.set("eos_tries", String(st.tries - 1));
      write(next);
      running = st.trial;
      commitUpdate = true;
    } else {
      if (st.trial) {
        const next = new Map(vars);
        next.set("eos_trial", "");
        write(next);
      }
      running = st.defaultSlot;
      commitUpdate = false;
    }
  };
  for (const op of ops) {
    if (op.kind === "apply") {
      const target = otherSlot(running);
      const invalid = typed(["SLOT", "BOOT_CONTROL"], () => markInvalid(vars, target));
      if (!(invalid instanceof EosError) && write(invalid)) {
        if (target === "A") aEverRewritten = true;
        if (op.cut)
          grubBoot(); // power lost while writing the slot
        else {
          const trial = typed(["USAGE", "BOOT_CONTROL"], () =>
            markTrial(vars, target, { version: op.version, sha256: op.sha256, size: op.size }, op.tries),
          );
          if (!(trial instanceof EosError) && write(trial)) {
            running = target; // kexec, not through GRUB
            commitUpdate = true;
          }
        }
      }
    } else if (op.kind === "grub") {
      grubBoot();
    } else if (op.kind === "commit") {
      if (commitUpdate) {
        const done = typed(["BOOT_CONTROL"], () => commitSlot(vars, running));
        if (!(done instanceof EosError)) write(done.vars);
      }
    } else {
      const target = otherSlot(running);
      if (hasRecord(vars, target)) {
        // os-update verified the slot against its record first.
        if (write(rollbackTo(vars, target))) grubBoot();
      }
    }
    const st = readBootState(vars);
    const initialA = st.defaultSlot === "A" && !initialRecord && !aEverRewritten;
    assert.ok(hasRecord(vars, st.defaultSlot) || initialA, `default ${st.defaultSlot} has a verified record`);
    if (st.trial) {
      assert.notEqual(st.trial, st.defaultSlot, "a trial is never the default");
      assert.ok(hasRecord(vars, st.trial), "a trial slot has a record");
      assert.ok(st.tries >= 0 && st.tries <= 9);
    }
  }
}

// ---------------------------------------------------------------- small grammars

const IMAGE_DIRS = ["/srv/eos/images", "/var/lib/os-update/images/"];

const grammarProperties: FuzzProperty[] = [
  property("restricted-command", () =>
    fc.property(fc.oneof(forcedCommand, anyString(60)), (command) => {
      const result = parseRestrictedCommand(command, IMAGE_DIRS);
      if (!result.ok) {
        assert.equal(typeof result.reason, "string");
        return;
      }
      const { name } = result.request;
      assert.ok(isSafeImageName(name), `published names only: ${JSON.stringify(name)}`);
      for (const dir of IMAGE_DIRS) {
        for (const suffix of [".raw", ".manifest.json", ".manifest.json.sig", ".raw.dev"]) {
          const path = resolve(dir, `${name}${suffix}`);
          assert.ok(
            path.startsWith(`${resolve(dir)}/`) && !path.slice(resolve(dir).length + 1).includes("/"),
          );
        }
      }
      assert.equal(join("/", name), `/${name}`);
      if (result.request.kind === "read")
        assert.ok(Number.isSafeInteger(result.request.offset) && result.request.offset >= 0);
    }),
  ),
  property("http-range", () =>
    fc.property(
      fc.option(rangeHeader, { nil: undefined }),
      fc.oneof(fc.constant(0), fc.nat({ max: 10 }), fc.nat()),
      (header, size) => {
        const r = parseRange(header, size);
        if (r.kind === "range") {
          assert.ok(Number.isSafeInteger(r.start) && Number.isSafeInteger(r.end));
          assert.ok(
            r.start >= 0 && r.start <= r.end && r.end < size,
            `${JSON.stringify(header)} of ${size}: ${r.start}-${r.end}`,
          );
        }
      },
    ),
  ),
];

export const FUZZ_PROPERTIES: FuzzProperty[] = [
  ...gptProperties,
  ...manifestProperties,
  ...configProperties,
  ...bootProperties,
  ...grammarProperties,
];

export function fuzzProperty(name: string): FuzzProperty {
  const found = FUZZ_PROPERTIES.find((p) => p.name === name);
  if (!found) throw new Error(`no fuzz property ${name}`);
  return found;
}

/**
 * Runs `name` as a unit test: a bounded number of runs (FUZZ_RUNS overrides),
 * a random seed unless FUZZ_SEED is set (a failure prints the seed and path
 * to replay), and a time limit after which a slow or stuck property fails.
 */
export async function assertFuzz(name: string, numRuns = 300): Promise<void> {
  const env = process.env;
  const details = await fuzzProperty(name).check({
    numRuns: env.FUZZ_RUNS ? Number(env.FUZZ_RUNS) : numRuns,
    ...(env.FUZZ_SEED ? { seed: Number(env.FUZZ_SEED) } : {}),
    timeout: 2_000,
    interruptAfterTimeLimit: 15_000,
    markInterruptAsFailure: true,
  });
  if (details.failed) assert.fail(`${name}: ${fc.defaultReportMessage(details)}`);
}
