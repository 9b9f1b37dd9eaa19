/**
 * Issue 14: the original EOS and flake-pilot's input, as they write it,
 * through EOS's pure parts. Fixtures: test/fixtures/flake-pilot/ (from
 * flake-pilot's documented schema and templates, not from EOS's writer).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { EosError } from "../../src/core/errors.ts";
import { splitFragmentNames } from "../../src/core/flakes/flake-config.ts";
import { expandPercentVars } from "../../src/core/flakes/pilot-args.ts";
import { parseContainerFlake } from "../../src/core/flakes/flake-yaml.ts";
import { formatRows, parseListFormat } from "../../src/core/flakes/listing.ts";
import { podmanOptions } from "../../src/core/flakes/container.ts";
import {
  bootArgs,
  bootArgsForInstance,
  registeredBootArgs,
  vmFlakeFromDocuments,
} from "../../src/core/flakes/vm.ts";
import { parseYamlMapping } from "../../src/core/flakes/flake-yaml.ts";
import { expandLongOptionPrefixes } from "../../src/core/long-options.ts";
import { parseRestrictedCommand } from "../../src/core/server/restricted-command.ts";
import {
  escapeUnitInstance,
  fetchTimerUnit,
  matchConfiguredImage,
} from "../../src/core/server/published-name.ts";
import { EOS_VERSION } from "../../src/core/version.ts";

const FIXTURES = fileURLToPath(new URL("../fixtures/flake-pilot/", import.meta.url));
const fixture = (name: string) => ({
  file: `/usr/share/flakes/${name}`,
  text: readFileSync(FIXTURES + name, "utf8"),
});
const vmDocs = (...names: string[]) =>
  names.map((n) => {
    const f = fixture(n);
    return { file: f.file, data: parseYamlMapping(f.text, f.file) };
  });

function throwsEos(fn: () => unknown, code: string, pattern: RegExp, hint?: RegExp): void {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof EosError, String(error));
    assert.equal(error.code, code);
    assert.match(error.message, pattern);
    if (hint) assert.match(error.hint ?? "", hint);
    return;
  }
  assert.fail(`expected ${code} ${String(pattern)}`);
}

// ---------------------------------------------------------------- 5

test("5: a container flake with the other engine's section null (vm: null, vm: ~) loads", () => {
  const lynx = parseContainerFlake([fixture("lynx.yaml")]);
  assert.equal(lynx.name, "suse-apps/lynx");
  assert.equal(lynx.baseContainer, "basesystem");
  const joe = parseContainerFlake([fixture("joe.yaml")]);
  assert.equal(joe.targetAppPath, "/");
  // ... but a container flake with a real vm: section is still refused, naming the key.
  throwsEos(
    () =>
      parseContainerFlake([
        { file: "/f/x.yaml", text: `${fixture("joe.yaml").text.replace("vm: ~", "vm: {name: tw}")}` },
      ]),
    "CONFIG",
    /\/f\/x\.yaml: vm: must be empty/,
  );
});

test("5: a VM flake flake-ctl firecracker register wrote (container: null, instance: null, cache_type: null) loads", () => {
  const flake = vmFlakeFromDocuments(vmDocs("firefox.yaml"));
  assert.equal(flake.name, "tw");
  assert.equal(flake.runtime.resume, true);
  assert.equal(flake.runtime.firecracker.overlaySize, "20GiB");
  assert.equal(flake.runtime.firecracker.cacheType, "Writeback");
});

// ---------------------------------------------------------------- 6

test("6: NAME.d/*.yml and *.yaml are read in one sorted order; other files are reported", () => {
  assert.deepEqual(splitFragmentNames(["20-resume.yaml", "README", "10-net.yml", ".x.yaml.swp", ".y.yaml"]), {
    read: ["10-net.yml", "20-resume.yaml"],
    ignored: ["README"],
  });
  const flake = parseContainerFlake([
    fixture("lynx.yaml"),
    fixture("lynx.d/10-net.yml"),
    fixture("lynx.d/20-resume.yaml"),
  ]);
  assert.deepEqual(flake.runtime.podman, ["--net host"]);
  assert.equal(flake.runtime.resume, true);
});

// ---------------------------------------------------------------- 7

test("7: the templates' placeholders: the error names the field to fill", () => {
  throwsEos(
    () => parseContainerFlake([fixture("container-flake.yaml")]),
    "CONFIG",
    /container\.target_app_path: still holds the template's placeholder "path\/to\/program\/in\/container"/,
    /fill in container\.target_app_path with the absolute path of the program inside the container/,
  );
  throwsEos(
    () => vmFlakeFromDocuments(vmDocs("firecracker-flake.yaml")),
    "CONFIG",
    /vm\.target_app_path: still holds the template's placeholder/,
    /fill in vm\.target_app_path/,
  );
  const hostOnly = fixture("container-flake.yaml").text.replace("path/to/program/in/container", "/usr/bin/x");
  throwsEos(
    () => parseContainerFlake([{ file: "/f/x.yaml", text: hostOnly }]),
    "CONFIG",
    /container\.host_app_path: still holds the template's placeholder "path\/to\/program\/on\/host"/,
    /fill in container\.host_app_path with the absolute path of the command on the host/,
  );
});

// ---------------------------------------------------------------- 8

test("8: %VAR expands; an unset one is an error naming it; %% is a literal %", () => {
  const joe = parseContainerFlake([fixture("joe.yaml")]);
  assert.deepEqual(podmanOptions(joe.runtime.podman, { env: { HOME: "/home/u" }, removeAfterRun: true }), [
    "--rm",
    "--volume",
    "/home/u:/home",
  ]);
  throwsEos(
    () => podmanOptions(joe.runtime.podman, { env: {}, removeAfterRun: true }),
    "FLAKE",
    /"%HOME:\/home" uses %HOME, which is not set/,
    /%% is a literal %/,
  );
  assert.equal(expandPercentVars("--label pct=50%%", {}), "--label pct=50%");
});

// ---------------------------------------------------------------- 16

test("16: register writes flake-pilot's boot args; the pilot drops sci_* and sets its own", () => {
  assert.deepEqual(registeredBootArgs({ noNet: true, resume: true, forceVsock: true }), [
    "init=/usr/sbin/sci",
    "console=ttyS0",
    "root=/dev/vda",
    "acpi=off",
    "rd.neednet=1",
    "quiet",
    "sci_resume=1",
    "sci_force_vsock=1",
  ]);
  assert.ok(registeredBootArgs({}).includes("ip=dhcp"));
  const flake = vmFlakeFromDocuments(vmDocs("firefox.yaml"));
  // The file flake-ctl wrote is exactly what the register of the same flags writes here.
  assert.deepEqual(
    flake.runtime.firecracker.bootArgs,
    registeredBootArgs({ noNet: true, resume: true, forceVsock: true }),
  );
  const line = bootArgs(flake.runtime.firecracker.bootArgs, {
    engine: "firecracker",
    overlay: true,
    resume: true,
    debug: false,
    vsockPort: 52,
  });
  assert.doesNotMatch(line, /sci_resume|sci_force_vsock|ip=/);
  assert.match(line, /sci\.resume=1/);
});

test("instance: boot args per @NAME replace the same key, add the others", () => {
  const text = fixture("firefox.yaml").text.replace(
    "instance: null",
    'instance:\n        "@id":\n          boot_args:\n          - console=ttyS1\n          - ip=172.16.0.2::172.16.0.1:255.255.255.0::eth0:off',
  );
  const flake = vmFlakeFromDocuments([{ file: "/f/firefox.yaml", data: parseYamlMapping(text, "/f") }]);
  const args = bootArgsForInstance(flake, "id");
  assert.equal(args[1], "console=ttyS1");
  assert.equal(args.at(-1), "ip=172.16.0.2::172.16.0.1:255.255.255.0::eth0:off");
  assert.deepEqual(bootArgsForInstance(flake, undefined), flake.runtime.firecracker.bootArgs);
  assert.deepEqual(bootArgsForInstance(flake, "other"), flake.runtime.firecracker.bootArgs);
});

// ---------------------------------------------------------------- 15

test("15: list/show formats: table, json, csv (quoted as RFC 4180)", () => {
  const rows = [
    { name: "lynx", image: "suse-apps/lynx", app: "/usr/bin/lynx" },
    { name: "odd", image: 'a,"b"', app: null },
  ];
  assert.equal(
    formatRows(rows, ["name", "image", "app"], "table"),
    'NAME  IMAGE           APP\nlynx  suse-apps/lynx  /usr/bin/lynx\nodd   a,"b"           -\n',
  );
  assert.equal(
    formatRows(rows, ["name", "image"], "csv"),
    'name,image\r\nlynx,suse-apps/lynx\r\nodd,"a,""b"""\r\n',
  );
  assert.deepEqual(JSON.parse(formatRows(rows, ["name", "app"], "json")), [
    { name: "lynx", app: "/usr/bin/lynx" },
    { name: "odd", app: null },
  ]);
  assert.equal(parseListFormat(undefined, true), "json");
  assert.equal(parseListFormat(undefined, undefined), undefined);
  throwsEos(() => parseListFormat("xml", undefined), "USAGE", /--format "xml": use table, json or csv/);
});

test("15: --version is package.json's", () => {
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as {
    version: string;
  };
  assert.equal(EOS_VERSION, pkg.version);
});

// ---------------------------------------------------------------- 2

test("2: the original --read NAME (sudo cat DIR/NAME or DIR/NAME.raw) asks for the whole disk image", () => {
  const dirs = ["/srv/www/fleet/os-images"];
  for (const command of [
    "sudo cat /srv/www/fleet/os-images/EOS.x86_64-AB-TW",
    "sudo cat /srv/www/fleet/os-images/EOS.x86_64-AB-TW.raw",
  ]) {
    assert.deepEqual(parseRestrictedCommand(command, dirs), {
      ok: true,
      request: { kind: "read", name: "EOS.x86_64-AB-TW", what: "disk", offset: 0 },
    });
  }
  // Still only image names in the image directory.
  for (const command of [
    "sudo cat /srv/www/fleet/os-images/.versions",
    "sudo cat /srv/www/fleet/os-images/../../../etc/shadow",
    "sudo cat /etc/os-update.yml",
  ])
    assert.equal(parseRestrictedCommand(command, dirs).ok, false, command);
});

// ---------------------------------------------------------------- 3

test("3: unique long-option prefixes as getopt_long took them; ambiguous ones name the candidates", () => {
  const options = [
    { long: "--check", takesValue: false },
    { long: "--commit", takesValue: false },
    { long: "--read", takesValue: true },
    { long: "--rollback", takesValue: false },
    { long: "--reboot", takesValue: false },
  ];
  assert.deepEqual(expandLongOptionPrefixes(["--chec"], options), ["--check"]);
  assert.deepEqual(expandLongOptionPrefixes(["--rea", "--chec", "--rol", "--rea=x"], options), [
    "--read",
    "--chec",
    "--rollback",
    "--read=x",
  ]);
  assert.deepEqual(expandLongOptionPrefixes(["--unknown", "--", "--chec"], options), [
    "--unknown",
    "--",
    "--chec",
  ]);
  throwsEos(() => expandLongOptionPrefixes(["--c"], options), "USAGE", /--c is ambiguous: --check, --commit/);
  throwsEos(
    () => expandLongOptionPrefixes(["--re"], options),
    "USAGE",
    /--re is ambiguous: --read, --reboot/,
  );
});

// ---------------------------------------------------------------- 4, 20

test("4: fetch --image takes a configured name, the original daemon's path, or the origin URL", () => {
  const images = [
    { name: "EOS.aarch64-RPI-TW", image: "https://example.org/EOS.aarch64-RPI.raw.xz" },
    { name: "EOS.x86_64-AB", image: "https://example.org/EOS.x86_64-AB.raw.xz" },
  ];
  assert.equal(matchConfiguredImage("EOS.aarch64-RPI-TW", images), "EOS.aarch64-RPI-TW");
  assert.equal(matchConfiguredImage("EOS.aarch64-RPI-TW.raw", images), "EOS.aarch64-RPI-TW");
  assert.equal(
    matchConfiguredImage("/srv/www/fleet/os-images/EOS.aarch64-RPI-TW.raw", images),
    "EOS.aarch64-RPI-TW",
  );
  assert.equal(matchConfiguredImage("https://example.org/EOS.x86_64-AB.raw.xz", images), "EOS.x86_64-AB");
  assert.equal(matchConfiguredImage("/srv/www/fleet/os-images/Other.raw", images), undefined);
});

test("20: timer units per image, escaped as systemd-escape does", () => {
  assert.equal(fetchTimerUnit("EOS.aarch64-RPI-TW"), "os-update-daemon@EOS.aarch64-RPI-TW.timer");
  assert.equal(escapeUnitInstance("g++"), "g\\x2b\\x2b");
});

test("19: CRC-32 without zlib.crc32 (Debian 12's Node 18) is zlib's", async () => {
  const { crc32Portable } = await import("../../src/core/crc32.ts");
  assert.equal(crc32Portable(Buffer.from("123456789")), 0xcbf43926);
  assert.equal(crc32Portable(Buffer.alloc(0)), 0);
  const zlib = (await import("node:zlib")) as { crc32?: (d: Uint8Array) => number };
  const data = Buffer.from(Array.from({ length: 4099 }, (_, i) => (i * 131 + 7) & 0xff));
  if (zlib.crc32) assert.equal(crc32Portable(data), zlib.crc32(data));
});
