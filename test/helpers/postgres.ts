/**
 * A real PostgreSQL for the control plane's tests: Debian's server binaries,
 * a cluster in a temporary directory, its socket there too and TCP only on
 * 127.0.0.1 at a free port, so it touches nothing of the machine's own
 * clusters. initdb refuses to run as root: as root, the cluster belongs to
 * the `postgres` user (Debian's package makes it) or else `nobody`.
 */
import { chown, mkdtemp, readdir, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { run } from "./run.ts";

export interface Postgres {
  /** A connection URL for a new, empty database in the cluster. */
  freshDatabase(): Promise<string>;
  stop(): Promise<void>;
}

async function binDir(): Promise<string | undefined> {
  if (process.env.EOS_PG_BIN) return process.env.EOS_PG_BIN;
  const versions = await readdir("/usr/lib/postgresql").catch(() => [] as string[]);
  const newest = versions.filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a))[0];
  return newest === undefined ? undefined : `/usr/lib/postgresql/${newest}/bin`;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

async function uidOf(user: string): Promise<{ uid: number; gid: number } | undefined> {
  const r = await run("id", ["-u", user]);
  const g = await run("id", ["-g", user]);
  if (r.code !== 0 || g.code !== 0) return undefined;
  return { uid: Number(r.stdout.toString().trim()), gid: Number(g.stdout.toString().trim()) };
}

/** Starts a cluster, or says why it cannot (the caller skips with that reason). */
export async function startPostgres(): Promise<Postgres | { unavailable: string }> {
  const bin = await binDir();
  if (!bin)
    return {
      unavailable: "no PostgreSQL server binaries in /usr/lib/postgresql (apt-get install postgresql)",
    };
  const dir = await mkdtemp(join(tmpdir(), "eos-pg-"));
  let asUser: string[] = [];
  if (userInfo().uid === 0) {
    const user = (await uidOf("postgres")) ? "postgres" : "nobody";
    const ids = await uidOf(user);
    if (!ids) return { unavailable: `running as root and no ${user} user to own the cluster` };
    await chown(dir, ids.uid, ids.gid);
    asUser = ["runuser", "-u", user, "--"];
  }
  const exec = (program: string, args: string[]) =>
    asUser.length > 0
      ? run(asUser[0] as string, [...asUser.slice(1), join(bin, program), ...args], { cwd: dir })
      : run(join(bin, program), args, { cwd: dir });
  const data = join(dir, "data");
  const init = await exec("initdb", ["-D", data, "-A", "trust", "-U", "eos", "-E", "UTF8", "--no-sync"]);
  if (init.code !== 0) {
    await rm(dir, { recursive: true, force: true });
    return { unavailable: `initdb failed: ${init.stderr.trim().split("\n").slice(-2).join(" ")}` };
  }
  const port = await freePort();
  const options = `-k ${dir} -p ${port} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c synchronous_commit=off`;
  const start = await exec("pg_ctl", [
    "-D",
    data,
    "-l",
    join(dir, "log"),
    "-w",
    "-t",
    "60",
    "-o",
    options,
    "start",
  ]);
  if (start.code !== 0) {
    await rm(dir, { recursive: true, force: true });
    return { unavailable: `pg_ctl start failed: ${start.stderr.trim() || start.stdout.toString().trim()}` };
  }
  const admin = `postgres://eos@127.0.0.1:${port}/postgres`;
  let n = 0;
  return {
    async freshDatabase() {
      const name = `eos_test_${process.pid}_${++n}`;
      const client = new pg.Client({ connectionString: admin });
      await client.connect();
      try {
        await client.query(`CREATE DATABASE ${name}`);
      } finally {
        await client.end();
      }
      return `postgres://eos@127.0.0.1:${port}/${name}`;
    },
    async stop() {
      await exec("pg_ctl", ["-D", data, "-m", "immediate", "-w", "stop"]);
      await rm(dir, { recursive: true, force: true });
    },
  };
}
