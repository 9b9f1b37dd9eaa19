import { test } from "node:test";
import assert from "node:assert/strict";
import {
  deviceConfigSchema,
  parseDuration,
  parseYamlConfig,
  serverConfigSchema,
} from "../../src/core/config.ts";
import { isSafeImageName } from "../../src/core/image-name.ts";
import { EosError } from "../../src/core/errors.ts";

const FILE = "/etc/os-update.yml";

const device = (text: string) => parseYamlConfig(text, FILE, deviceConfigSchema);
const server = (text: string) => parseYamlConfig(text, FILE, serverConfigSchema);

/** A CONFIG error whose message is exactly `/etc/os-update.yml: <detail>`. */
function configError(detail: RegExp | string) {
  return (error: unknown) => {
    assert.ok(error instanceof EosError, String(error));
    assert.equal(error.code, "CONFIG");
    assert.ok(error.message.startsWith(`${FILE}: `), error.message);
    const rest = error.message.slice(FILE.length + 2);
    if (typeof detail === "string") assert.equal(rest, detail);
    else assert.match(rest, detail);
    return true;
  };
}

// The examples of README.md ("os-update.yml on a device" and "on an update server"), verbatim.
const README_DEVICE = `update:
  name: EOS.x86_64-AB # image name on the server
  server: fleet@updates.example # SSH transport (the original): USER@HOST
  pkey: /run/id_fleet # SSH key (installed by fleet --getkey)
  url: https://updates.example:8443 # HTTPS transport; preferred when set
  token: /run/eos/fleet-token # bearer token file (default when url is set)
  ca: /usr/share/eos/ca.pem # CA for a private server certificate
  keys: [/usr/share/eos/keys] # trusted release public keys (default)
  tries: 3 # trial boots before falling back
  port: 22 # SSH port
  known_hosts: /usr/share/eos/known_hosts # pin the server's host key (else accept-new)
`;

const README_SERVER = `update:
  - image: https://origin.example/EOS.x86_64-AB.raw.xz # xz, zstd, gzip or raw: detected by content
    name: EOS.x86_64-AB.raw # published as EOS.x86_64-AB (.raw is optional)
    manifest: https://origin.example/EOS.x86_64-AB.raw.manifest.json
    interval: 1h # --daemon refresh interval (default 1h)
    insecure: false # true publishes an image that has no signed manifest
images_dir: /srv/www/fleet/os-images
keys: [/usr/share/eos/keys] # trusted release public keys (files or directories of *.pub)
serve:
  {
    listen: 0.0.0.0,
    port: 8443,
    cert: /etc/ssl/eos.pem,
    key: /etc/ssl/eos.key,
    tokens_dir: /etc/os-update-server/tokens,
  }
`;

// --------------------------------------------------------------------------------------------- device

test("device: the README's map shape reads with every key", () => {
  assert.deepEqual(device(README_DEVICE), {
    update: {
      name: "EOS.x86_64-AB",
      server: "fleet@updates.example",
      pkey: "/run/id_fleet",
      url: "https://updates.example:8443",
      token: "/run/eos/fleet-token",
      ca: "/usr/share/eos/ca.pem",
      keys: ["/usr/share/eos/keys"],
      tries: 3,
      port: 22,
      known_hosts: "/usr/share/eos/known_hosts",
    },
  });
});

test("device: the original three keys suffice, and only name is required", () => {
  assert.deepEqual(device("update:\n  server: fleet@10.0.0.1\n  name: EOS\n  pkey: /run/id_fleet\n"), {
    update: { server: "fleet@10.0.0.1", name: "EOS", pkey: "/run/id_fleet" },
  });
  assert.deepEqual(device("update: {name: EOS, url: 'http://10.0.2.2:8080'}"), {
    update: { name: "EOS", url: "http://10.0.2.2:8080" },
  });
  assert.throws(() => device("update: {server: h}"), configError(/^update\.name: /));
});

test("device: server is USER@HOST or HOST", () => {
  for (const ok of ["updates.example", "fleet@updates.example", "fleet@10.0.0.1", "[::1]", "host_1"]) {
    assert.equal(device(`update: {name: EOS, server: "${ok}"}`).update.server, ok);
  }
  for (const bad of ["fleet@", "a b", "-oProxyCommand=x", "user@host;rm", "a@b@c", ""]) {
    assert.throws(
      () => device(`update: {name: EOS, server: "${bad}"}`),
      configError("update.server: must be USER@HOST or HOST"),
      bad,
    );
  }
});

test("device: tries are 1..9, the trial boots GRUB can count", () => {
  for (const n of [1, 9]) assert.equal(device(`update: {name: EOS, tries: ${n}}`).update.tries, n);
  for (const n of ["0", "10", "2.5", "-1"]) {
    assert.throws(() => device(`update: {name: EOS, tries: ${n}}`), configError(/^update\.tries: /), n);
  }
});

test("device: a list under update (the server shape) is refused, naming the key", () => {
  assert.throws(() => device("update:\n  - name: EOS\n"), configError(/^update: .*object/));
});

test("device: unknown keys are errors that name them with their path", () => {
  assert.throws(() => device("update: {name: EOS, sever: h}"), configError("unknown key update.sever"));
  assert.throws(() => device("update: {name: EOS}\nextra: 1\n"), configError("unknown key extra"));
  assert.throws(
    () => device("update: {name: EOS, a: 1, b: 2}"),
    configError("unknown key update.a, update.b"),
  );
});

test("device: wrong types name the key", () => {
  const cases: Array<[string, RegExp]> = [
    ["update: {name: EOS, tries: '3'}", /^update\.tries: .*number/],
    ["update: {name: EOS, port: 70000}", /^update\.port: /],
    ["update: {name: EOS, port: 0}", /^update\.port: /],
    ["update: {name: EOS, keys: /usr/share/eos/keys}", /^update\.keys: .*array/],
    ["update: {name: EOS, keys: [1]}", /^update\.keys\[0\]: /],
    ["update: {name: EOS, url: ftp://x}", /^update\.url: must be an http:\/\/ or https:\/\/ URL$/],
    ["update: {name: EOS, url: 'file:///srv'}", /^update\.url: /],
    ["update: {name: 42}", /^update\.name: /],
    ["update: {name: ../etc}", /^update\.name: must be letters, digits/],
    ["update: EOS", /^update: .*object/],
    ["- update", /^\(top level\): .*object/],
  ];
  for (const [text, re] of cases) assert.throws(() => device(text), configError(re), text);
  // Every problem is reported, each with its key.
  assert.throws(
    () => device("update: {name: 'a/b', tries: 0, port: x}"),
    configError(/^update\.name: .*; update\.tries: .*; update\.port: /),
  );
});

test("device: an empty file is missing its update map", () => {
  assert.throws(() => device(""), configError(/^update: /));
  assert.throws(() => device("# nothing\n"), configError(/^update: /));
});

// --------------------------------------------------------------------------------------------- server

test("server: the README's list shape reads with every key; .raw is dropped from the name", () => {
  assert.deepEqual(server(README_SERVER), {
    update: [
      {
        image: "https://origin.example/EOS.x86_64-AB.raw.xz",
        name: "EOS.x86_64-AB",
        manifest: "https://origin.example/EOS.x86_64-AB.raw.manifest.json",
        interval: 3600,
        insecure: false,
      },
    ],
    images_dir: "/srv/www/fleet/os-images",
    keys: ["/usr/share/eos/keys"],
    serve: {
      listen: "0.0.0.0",
      port: 8443,
      cert: "/etc/ssl/eos.pem",
      key: "/etc/ssl/eos.key",
      tokens_dir: "/etc/os-update-server/tokens",
    },
  });
});

test("server: the original shape, several images, file:// and http:// origins", () => {
  const c = server(`update:
  - image: file:///srv/build/EOS.x86_64-AB.raw
    name: EOS.x86_64-AB.raw
  - image: http://origin.example/EOS.aarch64-RPI-TW.raw.xz
    name: EOS.aarch64-RPI-TW
    interval: 15m
interval: 90
`);
  assert.deepEqual(
    c.update.map((i) => [i.name, i.interval]),
    [
      ["EOS.x86_64-AB", undefined],
      ["EOS.aarch64-RPI-TW", 900],
    ],
  );
  assert.equal(c.interval, 90);
  assert.deepEqual(server("update: []"), { update: [] });
});

test("server: a map under update (the device shape) is refused, naming the key", () => {
  assert.throws(() => server("update: {name: EOS}"), configError(/^update: .*array/));
});

test("server: unknown and mistyped keys name their path, list items by index", () => {
  const img = "image: https://o.example/x.raw, name: x";
  const cases: Array<[string, RegExp | string]> = [
    [`update: [{${img}, mirror: y}]`, "unknown key update[0].mirror"],
    [`update: [{${img}}, {${img}, sha: 1}]`, "unknown key update[1].sha"],
    [`update: [{${img}}]\nserve: {port: 8443, tls: true}`, "unknown key serve.tls"],
    [`update: [{${img}}]\nimage_dir: /srv`, "unknown key image_dir"],
    ["update: [{image: https://o.example/x.raw}]", /^update\[0\]\.name: /],
    ["update: [{name: x}]", /^update\[0\]\.image: /],
    ["update: [{image: ftp://o/x, name: x}]", "update[0].image: must be an http://, https:// or file:// URL"],
    [`update: [{${img}, manifest: /srv/m.json}]`, /^update\[0\]\.manifest: must be an http/],
    [`update: [{${img}, insecure: 'yes'}]`, /^update\[0\]\.insecure: .*boolean/],
    ["update: [{image: https://o.example/x, name: a/b.raw}]", /^update\[0\]\.name: must be letters/],
    ["update: [{image: https://o.example/x, name: ..raw}]", /^update\[0\]\.name: must be letters/],
    [`update: [{${img}, interval: soon}]`, /^update\[0\]\.interval: cannot read "soon" as a duration/],
    [`update: [{${img}}]\ninterval: 0s`, "interval: must be longer than zero"],
    [`update: [{${img}}]\nimages_dir: srv/www`, "images_dir: must be an absolute path"],
    [`update: [{${img}}]\nserve: {port: 65536}`, /^serve\.port: /],
    [`update: [{${img}}]\nkeys: /k`, /^keys: .*array/],
  ];
  for (const [text, detail] of cases) assert.throws(() => server(text), configError(detail), text);
});

// --------------------------------------------------------------------------------------------- YAML

test("YAML errors and duplicate keys name the file", () => {
  assert.throws(() => device("update: {name: EOS"), configError(/^invalid YAML at line \d+: /));
  assert.throws(
    () => device("update:\n  name: EOS\n  name: OTHER\n"),
    configError(/^invalid YAML at line \d+: .*unique/i),
  );
  assert.throws(() => device("update:\n\tname: EOS\n"), configError(/^invalid YAML at line \d+: /));
  // The file name in messages is whatever the caller passes (e.g. --config).
  assert.throws(() => parseYamlConfig("update: {name: EOS, x: 1}", "/tmp/my.yml", deviceConfigSchema), {
    message: "/tmp/my.yml: unknown key update.x",
  });
});

// --------------------------------------------------------------------------------------------- pieces

test("durations: plain seconds or a number with ms, s, m, min, h, d", () => {
  const cases: Array<[string | number, number]> = [
    ["90", 90],
    ["90s", 90],
    ["500ms", 0.5],
    ["15m", 900],
    ["15min", 900],
    ["1h", 3600],
    ["1.5h", 5400],
    ["1d", 86400],
    [" 2 h ", 7200],
    [30, 30],
    [0.5, 0.5],
  ];
  for (const [text, seconds] of cases) assert.equal(parseDuration(text), seconds, String(text));
  for (const bad of ["", "h", "1w", "-1s", "1h30m", "soon"])
    assert.throws(() => parseDuration(bad), /duration/, bad);
  for (const bad of ["0", "0s", 0, -5, Infinity, NaN]) assert.throws(() => parseDuration(bad), String(bad));
});

test("image names are safe in file names and URLs", () => {
  for (const ok of ["EOS", "EOS.x86_64-AB", "a+b_c", "9", "x".repeat(128)])
    assert.equal(isSafeImageName(ok), true, ok);
  for (const bad of ["", ".hidden", "a/b", "a\\b", "a..b", "..", "-x", "a b", "x".repeat(129), "é"]) {
    assert.equal(isSafeImageName(bad), false, bad);
  }
});

test("server: maintenance windows per tag group; a bad window names its place and what is wrong", () => {
  const ok = server(
    'update: []\nserve:\n  windows:\n    - tags: [lab]\n      window: "Mon-Fri 22:00-04:00"\n    - window: "Sat 00:00-24:00"\n',
  );
  assert.deepEqual(ok.serve?.windows, [
    { tags: ["lab"], window: "Mon-Fri 22:00-04:00" },
    { tags: [], window: "Sat 00:00-24:00" },
  ]);
  assert.throws(
    () => server('update: []\nserve:\n  windows:\n    - window: "Mon 25:00-26:00"\n'),
    configError(/^serve\.windows\[0\]\.window: .*"25:00" is not a time/),
  );
  assert.throws(
    () => server('update: []\nserve:\n  windows:\n    - tags: ["a b"]\n      window: "10:00-11:00"\n'),
    configError(/^serve\.windows\[0\]\.tags\[0\]: must be a tag/),
  );
});
