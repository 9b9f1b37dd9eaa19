import { test } from "node:test";
import assert from "node:assert/strict";
import { parseStorageUrl } from "../../src/core/server/storage-url.ts";
import { parseYamlConfig, serverConfigSchema } from "../../src/core/config.ts";

test("storage: s3://BUCKET/PREFIX gives the bucket and a prefix ending in /", () => {
  assert.deepEqual(parseStorageUrl("s3://eos-images/fleet/os", "storage"), {
    bucket: "eos-images",
    prefix: "fleet/os/",
    url: "s3://eos-images/fleet/os",
  });
  assert.deepEqual(parseStorageUrl("s3://eos-images/", "storage"), {
    bucket: "eos-images",
    prefix: "",
    url: "s3://eos-images",
  });
  assert.equal(parseStorageUrl("s3://b12/a//b/", "storage").prefix, "a/b/");
});

test("a bad bucket or prefix is a CONFIG error naming the key", () => {
  for (const bad of [
    "s3:/x",
    "http://b/x",
    "s3://UPPER/x",
    "s3://a/x",
    "s3://b..c/x",
    "s3://eos/a/../b",
    "s3://eos/a\u0001",
  ])
    assert.throws(
      () => parseStorageUrl(bad, "/etc/os-update.yml: storage"),
      (e: Error & { code?: string }) => {
        assert.equal(e.code, "CONFIG");
        assert.match(e.message, /^\/etc\/os-update.yml: storage: /);
        return true;
      },
    );
});

test("the server configuration takes storage: s3://… and s3:, and names the key it refuses", () => {
  const ok = parseYamlConfig(
    "update: []\nstorage: s3://eos/fleet\ns3:\n  endpoint: http://127.0.0.1:9000\n  force_path_style: true\nserve:\n  redirect: true\n  redirect_expiry: 2m\n",
    "/etc/os-update.yml",
    serverConfigSchema,
  );
  assert.equal(ok.storage, "s3://eos/fleet");
  assert.equal(ok.serve?.redirect_expiry, 120);
  for (const [text, key] of [
    ["update: []\nstorage: /srv/images\n", /storage/],
    ["update: []\ns3:\n  endpoint: ftp://x\n", /s3\.endpoint/],
    ["update: []\ns3:\n  bucket: x\n", /s3/],
  ] as const)
    assert.throws(
      () => parseYamlConfig(text, "/etc/os-update.yml", serverConfigSchema),
      (e: Error & { code?: string }) => e.code === "CONFIG" && key.test(e.message),
    );
});
