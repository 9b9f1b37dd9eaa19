/**
 * Issue 11 (hardening), finding 8: a token file edited in place (same inode,
 * the directory's mtime unchanged) takes effect at the next request.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { TokenStore } from "../../src/io/server/tokens.ts";
import { mustRun } from "../helpers/run.ts";

let dir: string;
before(async () => (dir = await mkdtemp(join(tmpdir(), "eos-hardening-tokens-"))));
after(async () => rm(dir, { recursive: true, force: true }));

const hashLine = (token: string) => `${createHash("sha256").update(token).digest("hex")}\n`;

/** Sets a path's mtime to exactly `ns` (touch keeps nanoseconds; utimes would round them). */
async function setMtimeNs(path: string, ns: bigint): Promise<void> {
  const stamp = `@${ns / 1_000_000_000n}.${String(ns % 1_000_000_000n).padStart(9, "0")}`;
  await mustRun("touch", ["-m", "-d", stamp, path]);
}

/** Rewrites `file` in place and puts back the mtimes of the file and its directory. */
async function overwriteInPlace(file: string, content: string): Promise<void> {
  const dirStat = await stat(dir, { bigint: true });
  const fileStat = await stat(file, { bigint: true });
  await writeFile(file, content); // O_TRUNC on the same inode
  await setMtimeNs(file, fileStat.mtimeNs);
  await setMtimeNs(dir, dirStat.mtimeNs);
  const after = await stat(file, { bigint: true });
  assert.equal(after.ino, fileStat.ino, "same inode");
  assert.equal(after.mtimeNs, fileStat.mtimeNs, "file mtime put back");
  assert.equal((await stat(dir, { bigint: true })).mtimeNs, dirStat.mtimeNs, "directory mtime put back");
}

test("a token file overwritten in place refuses the old token at once", async () => {
  const store = new TokenStore(dir);
  const token = await store.add("device-1");
  assert.equal(await store.authenticate(token), "device-1");
  const replacement = randomBytes(32).toString("base64url");
  await overwriteInPlace(join(dir, "device-1"), hashLine(replacement));
  assert.equal(await store.authenticate(token), undefined, "the old token is refused");
});

test("a token written into a file in place is taken within a second", async () => {
  const store = new TokenStore(dir);
  const token = await store.add("device-3");
  assert.equal(await store.authenticate(token), "device-3");
  const replacement = randomBytes(32).toString("base64url");
  await overwriteInPlace(join(dir, "device-3"), hashLine(replacement));
  await sleep(1100); // unknown tokens re-read the files at most once a second
  assert.equal(await store.authenticate(replacement), "device-3");
  assert.equal(await store.authenticate(token), undefined);
});

test("a token file emptied in place revokes the device", async () => {
  const store = new TokenStore(dir);
  const token = await store.add("device-2");
  assert.equal(await store.authenticate(token), "device-2");
  await overwriteInPlace(join(dir, "device-2"), "");
  assert.equal(await store.authenticate(token), undefined);
  assert.deepEqual(
    (await store.list()).map((t) => t.device),
    ["device-1", "device-3"],
  );
});
