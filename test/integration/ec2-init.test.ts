/**
 * eos-ec2-init (the bundle, as the image's unit runs it) against a local
 * IMDSv2 responder: the token flow, the keys and host name in a temporary
 * root, a service that never answers, no key pair, a malformed key.
 */
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runEos } from "../helpers/run.ts";
import { fakeEd25519Key, startImds, type ImdsServer } from "../helpers/imds.ts";

const IMAGE_KEY = fakeEd25519Key("baked-into-the-image");
const HOSTNAME = "ip-10-1-2-3.eu-test-1.compute.internal";

/** A root as the image has it: root and a second login user, the image's key and hosts. */
async function imageRoot(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), "eos-ec2-"));
  t.after(() => rm(root, { recursive: true, force: true }));
  await mkdir(join(root, "etc"), { recursive: true });
  await mkdir(join(root, "root/.ssh"), { recursive: true, mode: 0o700 });
  await mkdir(join(root, "home/admin"), { recursive: true });
  await writeFile(
    join(root, "etc/passwd"),
    "root:x:0:0:root:/root:/bin/bash\nadmin:x:1000:1001:Admin:/home/admin:/bin/bash\n",
  );
  await writeFile(join(root, "etc/hostname"), "eos\n");
  await writeFile(join(root, "etc/hosts"), "127.0.0.1\tlocalhost\n127.0.1.1\teos\n::1\tlocalhost\n");
  await writeFile(join(root, "root/.ssh/authorized_keys"), `${IMAGE_KEY}\n`, { mode: 0o600 });
  return root;
}

function run(root: string, url: string, args: string[] = []) {
  return runEos("eos-ec2-init", args, { env: { ...process.env, EOS_ROOT: root, EOS_IMDS_URL: url } });
}

describe("eos-ec2-init against an IMDSv2 responder", { timeout: 120_000 }, () => {
  let imds: ImdsServer;
  const keys = [
    { name: "laptop", key: fakeEd25519Key("laptop") },
    { name: "ci", key: fakeEd25519Key("ci") },
  ];
  before(async () => {
    imds = await startImds({ keys, hostname: `${HOSTNAME}\n` });
  });
  after(() => imds.close());

  it("refuses a GET without the session token, as IMDSv2 does", async () => {
    const r = await fetch(`${imds.url}/latest/meta-data/hostname`);
    assert.equal(r.status, 401);
  });

  it("takes a token first, then puts the keys and the host name into the root", async (t) => {
    const root = await imageRoot(t);
    imds.requests.length = 0;
    const r = await run(root, imds.url);
    assert.equal(r.code, 0, r.stderr);
    // The token flow: one PUT first, every GET with the token, no GET ever refused.
    assert.deepEqual(imds.requests[0], {
      method: "PUT",
      path: "/latest/api/token",
      status: 200,
      token: false,
    });
    const gets = imds.requests.slice(1);
    assert.ok(gets.length >= 4);
    assert.ok(
      gets.every((g) => g.method === "GET" && g.token && g.status === 200),
      JSON.stringify(gets),
    );

    const file = join(root, "root/.ssh/authorized_keys");
    const text = await readFile(file, "utf8");
    const lines = text.split("\n").filter((l) => l && !l.startsWith("#"));
    assert.deepEqual(
      lines,
      [IMAGE_KEY, keys[0]?.key, keys[1]?.key],
      "the image's key stays, IMDS's are added",
    );
    const st = await stat(file);
    assert.equal(st.mode & 0o777, 0o600);
    assert.equal(st.uid, 0);
    assert.equal(await readFile(join(root, "etc/hostname"), "utf8"), "ip-10-1-2-3\n");
    assert.match(
      await readFile(join(root, "etc/hosts"), "utf8"),
      new RegExp(`^127\\.0\\.1\\.1\\t${HOSTNAME} ip-10-1-2-3$`, "m"),
    );
    assert.doesNotMatch(await readFile(join(root, "etc/hosts"), "utf8"), /\teos$/m);
    assert.match(
      r.stdout.toString(),
      /2 SSH key\(s\) from IMDS \(laptop, ci\) for root in \/root\/\.ssh\/authorized_keys/,
    );

    // Once per boot, but a second run changes nothing.
    assert.equal((await run(root, imds.url)).code, 0);
    assert.equal(await readFile(file, "utf8"), text);
  });

  it("writes another login user's keys owned by that user, .ssh 0700", async (t) => {
    const root = await imageRoot(t);
    const r = await run(root, imds.url, ["--user", "admin"]);
    assert.equal(r.code, 0, r.stderr);
    const dir = await stat(join(root, "home/admin/.ssh"));
    assert.equal(dir.mode & 0o777, 0o700);
    assert.deepEqual([dir.uid, dir.gid], [1000, 1001]);
    const file = await stat(join(root, "home/admin/.ssh/authorized_keys"));
    assert.deepEqual([file.uid, file.gid, file.mode & 0o777], [1000, 1001, 0o600]);
    const missing = await run(root, imds.url, ["--user", "nobody"]);
    assert.equal(missing.code, 3);
    assert.match(missing.stderr, /user nobody is not in .*etc\/passwd/);
  });
});

describe("eos-ec2-init without a usable metadata service", { timeout: 120_000 }, () => {
  it("gives up on a service that never answers within --wait, exits 0 and says so", async (t) => {
    const imds = await startImds({ hang: true });
    t.after(() => imds.close());
    const root = await imageRoot(t);
    const r = await run(root, imds.url, ["--wait", "3", "--timeout", "1"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout.toString(),
      /no instance metadata service answered at http:\/\/127\.0\.0\.1:\d+ within 3 s .*no answer within the timeout.*not on EC2.*stay as the image has them/,
    );
    assert.equal(await readFile(join(root, "etc/hostname"), "utf8"), "eos\n");
    assert.equal(await readFile(join(root, "root/.ssh/authorized_keys"), "utf8"), `${IMAGE_KEY}\n`);
  });

  it("gives up on a port where nothing listens the same way", async (t) => {
    const closed: Server = createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const port = (closed.address() as { port: number }).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const root = await imageRoot(t);
    const r = await run(root, `http://127.0.0.1:${port}`, ["--wait", "2", "--timeout", "1"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout.toString(), /no instance metadata service answered .*ECONNREFUSED/);
  });

  it("says clearly that an instance without a key pair has no keys (404), and still sets the host name", async (t) => {
    const imds = await startImds({ hostname: HOSTNAME });
    t.after(() => imds.close());
    const root = await imageRoot(t);
    const r = await run(root, imds.url);
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout.toString(),
      /public-keys\/: 404, the instance was launched without a key pair .*authorized_keys keeps only the image's keys/,
    );
    assert.equal(await readFile(join(root, "root/.ssh/authorized_keys"), "utf8"), `${IMAGE_KEY}\n`);
    assert.equal(await readFile(join(root, "etc/hostname"), "utf8"), "ip-10-1-2-3\n");
  });

  it("refuses a malformed key (and a key with options), keeps the good one, exits 3", async (t) => {
    const good = fakeEd25519Key("good");
    const imds = await startImds({
      hostname: HOSTNAME,
      keys: [
        { name: "good", key: good },
        { name: "garbage", key: "ssh-ed25519 AAAA!!not-base64" },
        { name: "forced", key: `command="/bin/sh -c evil" ${good}` },
      ],
    });
    t.after(() => imds.close());
    const root = await imageRoot(t);
    const r = await run(root, imds.url);
    assert.equal(r.code, 3, r.stdout.toString());
    assert.match(
      r.stderr,
      /refused key 1: IMDS \/latest\/meta-data\/public-keys\/1\/openssh-key: not an OpenSSH public key line/,
    );
    assert.match(r.stderr, /refused key 2: .*not an OpenSSH public key line/);
    const lines = (await readFile(join(root, "root/.ssh/authorized_keys"), "utf8"))
      .split("\n")
      .filter((l) => l && !l.startsWith("#"));
    assert.deepEqual(lines, [IMAGE_KEY, good]);
  });

  it("refuses a host name that is not one, and writes nothing", async (t) => {
    const imds = await startImds({
      hostname: "-rf $(reboot)",
      keys: [{ name: "k", key: fakeEd25519Key("k") }],
    });
    t.after(() => imds.close());
    const root = await imageRoot(t);
    const r = await run(root, imds.url);
    assert.equal(r.code, 3);
    assert.match(r.stderr, /IMDS \/latest\/meta-data\/hostname .*not a host name/);
    assert.equal(await readFile(join(root, "etc/hostname"), "utf8"), "eos\n");
    assert.equal(await readFile(join(root, "root/.ssh/authorized_keys"), "utf8"), `${IMAGE_KEY}\n`);
  });
});
