/**
 * The keys an image trusts, from its description to the device: release keys
 * in /usr/share/eos/keys, and the update server's assignment keys in
 * /usr/share/eos/assignment-keys, where os-update looks by default before it
 * accepts a signed downgrade (a rollout's abort, a pin).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { mkdtemp, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadDescription } from "../../src/io/image/build.ts";
import { imageKeys, writeImageKeys } from "../../src/io/image/image-keys.ts";
import { judgeAssignment, DEFAULT_ASSIGNMENT_KEYS } from "../../src/io/update/assignment.ts";
import { deviceConfigSchema, parseYamlConfig } from "../../src/core/config.ts";
import { signAssignment, tokenDigest, ASSIGNMENT_LIFETIME_MS } from "../../src/core/update/assignment.ts";
import type { Manifest } from "../../src/core/manifest.ts";
import type { UpdateSource } from "../../src/io/update/source.ts";
import { captureContext } from "../helpers/context.ts";

const pem = (k: KeyObject) => k.export({ format: "pem", type: "spki" }).toString();

async function world(t: { after: (fn: () => Promise<void>) => void }) {
  const dir = await mkdtemp(join(tmpdir(), "eos-image-keys-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const release = generateKeyPairSync("ed25519");
  const assignment = generateKeyPairSync("ed25519");
  await writeFile(join(dir, "release.pub"), pem(release.publicKey));
  await writeFile(join(dir, "fleet-assign.pub"), pem(assignment.publicKey));
  const describe = async (update: string) => {
    const path = join(dir, "image.yaml");
    await writeFile(path, `name: KEYS\nversion: 1.0.0\nupdate:\n${update}`);
    return { desc: await loadDescription(path), base: dir };
  };
  return { dir, release, assignment, describe };
}

test("an image carries the description's assignment keys where os-update looks, and the device takes a downgrade signed with one", async (t) => {
  const w = await world(t);
  const { desc, base } = await w.describe("  keys: [release.pub]\n  assignment_keys: [fleet-assign.pub]\n");
  const keys = await imageKeys(desc, base, []);
  const tree = join(w.dir, "tree");
  await writeImageKeys(tree, keys);
  assert.deepEqual(await readdir(join(tree, DEFAULT_ASSIGNMENT_KEYS)), ["fleet-assign.pub"]);
  assert.deepEqual(await readdir(join(tree, "/usr/share/eos/keys")), ["release.pub"]);
  assert.equal((await stat(join(tree, DEFAULT_ASSIGNMENT_KEYS, "fleet-assign.pub"))).mode & 0o777, 0o644);

  // The device as built: no assignment_keys in its os-update.yml, so the default directory counts.
  const { ctx } = captureContext({ root: tree });
  const config = parseYamlConfig(
    "update:\n  name: KEYS\n  url: https://updates.example\n",
    "os-update.yml",
    deviceConfigSchema,
  );
  const token = "device-token-1";
  const running = "a".repeat(64);
  const manifest = { name: "KEYS", version: "0.9.0", partitions: { root: { sha256: "b".repeat(64) } } };
  const offer = (key: KeyObject): UpdateSource =>
    ({
      fetchAssignment: async () => ({
        token,
        body: Buffer.from(
          JSON.stringify(
            signAssignment(
              {
                kind: "eos-downgrade-assignment",
                image: "KEYS",
                version: "0.9.0",
                sha256: "b".repeat(64),
                from_sha256: running,
                device_token_sha256: tokenDigest(token),
                reason: "abort canary",
                expires: new Date(Date.now() + ASSIGNMENT_LIFETIME_MS).toISOString(),
              },
              key,
            ),
          ),
        ),
      }),
    }) as unknown as UpdateSource;
  const judgeSignedBy = (key: KeyObject) =>
    judgeAssignment(ctx, config, offer(key), manifest as Manifest, running);
  const judged = await judgeSignedBy(w.assignment.privateKey);
  assert.ok("allowed" in judged, JSON.stringify(judged));
  // Signed with the release key instead: the image does not trust it for assignments.
  const refused = await judgeSignedBy(w.release.privateKey);
  assert.ok("refused" in refused && /not signed by a trusted assignment key/.test(refused.refused));
});

test("without assignment keys the image has no assignment directory: downgrades stay refused", async (t) => {
  const w = await world(t);
  const { desc, base } = await w.describe("  keys: [release.pub]\n");
  const tree = join(w.dir, "tree");
  await writeImageKeys(tree, await imageKeys(desc, base, []));
  await assert.rejects(stat(join(tree, DEFAULT_ASSIGNMENT_KEYS)), { code: "ENOENT" });
});

test("a release key given as an assignment key, or a file that is no key, is refused naming the field", async (t) => {
  const w = await world(t);
  const same = await w.describe("  keys: [release.pub]\n  assignment_keys: [release.pub]\n");
  await assert.rejects(imageKeys(same.desc, same.base, []), (e: Error & { code?: string }) => {
    assert.equal(e.code, "CONFIG");
    assert.match(e.message, /update\.assignment_keys\[0\]: release\.pub is also a release key/);
    return true;
  });
  await writeFile(join(w.dir, "junk.pub"), "not a key\n");
  const junk = await w.describe("  assignment_keys: [fleet-assign.pub, junk.pub]\n");
  await assert.rejects(imageKeys(junk.desc, junk.base, []), /junk\.pub: not an ed25519 public key/);
});
