import { test } from "node:test";
import assert from "node:assert/strict";
import { judgeOffer, type DeviceIdentity } from "../../src/core/update/acceptance.ts";
import { checkPublishedName } from "../../src/core/server/published-name.ts";
import type { Manifest } from "../../src/core/manifest.ts";

const manifest = (over: Partial<Manifest> = {}, sha = "b".repeat(64)): Manifest => ({
  schema: 1,
  name: "EOS.x86_64-AB",
  version: "2.0.0",
  architecture: "x86_64",
  created: "2026-11-30T00:00:00Z",
  partitions: { root: { label: "p.lxreadonly", size: 1024, sha256: sha } },
  ...over,
});
const device: DeviceIdentity = { image: "EOS.x86_64-AB", architecture: "x86_64", source: "test" };
const running = { version: "1.0.0", sha256: "a".repeat(64) };
const refused = (re: RegExp) => (e: unknown) =>
  (e as { code?: string }).code === "REFUSED" && re.test((e as Error).message);

test("a device accepts only manifests of its own image and architecture", () => {
  assert.deepEqual(judgeOffer(manifest(), device, running), { kind: "update" });
  assert.throws(
    () => judgeOffer(manifest({ name: "OTHER" }), device, running),
    refused(/for image OTHER.*runs EOS\.x86_64-AB/),
  );
  assert.throws(
    () => judgeOffer(manifest({ architecture: "aarch64" }), device, running),
    refused(/built for aarch64, this device is x86_64/),
  );
  // Even a manifest of the running bytes is refused when it names another image: it is not this device's release.
  assert.throws(
    () => judgeOffer(manifest({ name: "OTHER" }, running.sha256), device, running),
    refused(/OTHER/),
  );
});

test("versions: up to date by hash, an update only when newer", () => {
  assert.deepEqual(judgeOffer(manifest({}, running.sha256), device, running), { kind: "up-to-date" });
  assert.deepEqual(judgeOffer(manifest({ version: "0.9" }), device, running), {
    kind: "not-newer",
    running: "1.0.0",
  });
  // The same version with other bytes is not an update either (a re-signed or tampered release).
  assert.deepEqual(judgeOffer(manifest({ version: "1.0.0" }), device, running), {
    kind: "not-newer",
    running: "1.0.0",
  });
  assert.deepEqual(judgeOffer(manifest({ version: "1.0.1" }), device, running), { kind: "update" });
  // A device that does not know its version (an old boot control block) takes any other bytes.
  assert.deepEqual(judgeOffer(manifest({ version: "0.1" }), device, { ...running, version: undefined }), {
    kind: "update",
  });
});

test("the server publishes a manifest only under its image's name (or NAME-CHANNEL) and spelled architecture", () => {
  checkPublishedName("EOS.x86_64-AB", manifest());
  checkPublishedName("EOS.x86_64-AB-TW", manifest());
  assert.throws(() => checkPublishedName("SWAPPED", manifest({ name: "OTHER" })), refused(/for image OTHER/));
  assert.throws(() => checkPublishedName("EOS.x86_64-ABC", manifest()), refused(/for image EOS\.x86_64-AB/));
  assert.throws(() => checkPublishedName("EOS", manifest()), refused(/for image/));
  assert.throws(
    () => checkPublishedName("EOS.aarch64-RPI-TW", manifest({ name: "EOS.aarch64-RPI" })),
    refused(/says aarch64, but .* built for x86_64/),
  );
  checkPublishedName("EOS.aarch64-RPI-TW", manifest({ name: "EOS.aarch64-RPI", architecture: "aarch64" }));
  // A name that spells no architecture does not constrain it.
  checkPublishedName("EOS", manifest({ name: "EOS", architecture: "riscv64" }));
});
