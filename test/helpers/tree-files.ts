/** Trees as the container-store tests compare and pack them: hashed by content, tarred reproducibly. */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { lstatSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { join } from "node:path";

/** Every path, mode, link target and file content below dir, hashed: two equal stores give one hash. */
export function treeHash(dir: string): string {
  const h = createHash("sha256");
  const walk = (rel: string) => {
    const path = join(dir, rel);
    const st = lstatSync(path);
    h.update(`${rel}\0${st.mode}\0`);
    if (st.isSymbolicLink()) h.update(readlinkSync(path));
    else if (st.isFile()) h.update(readFileSync(path));
    else if (st.isDirectory()) for (const n of readdirSync(path).sort()) walk(join(rel, n));
  };
  walk(".");
  return h.digest("hex");
}

/** root as a tar with sorted names, one mtime and root's owner: the same tree gives the same bytes. */
export function reproducibleTar(root: string, tar: string, epoch: number): string {
  execFileSync("tar", [
    "--sort=name",
    `--mtime=@${epoch}`,
    "--owner=0",
    "--group=0",
    "-C",
    root,
    "-cf",
    tar,
    ".",
  ]);
  return tar;
}
