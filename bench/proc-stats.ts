/** A process's CPU time and memory from /proc, for the benches' server figures. */
import { readFile } from "node:fs/promises";

/** Its user + system CPU seconds so far (/proc/PID/stat, in clock ticks of 1/100 s). */
export async function cpuSeconds(pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, "utf8")).split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

export async function currentRss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
}

export async function peakRss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
}

/** Samples a process's RSS every `everyMs` while a run lasts; `stop()` gives the highest seen, the last reading included. */
export function sampleRss(pid: number, everyMs: number): { stop(): Promise<number> } {
  let highest = 0;
  const note = () =>
    currentRss(pid).then(
      (r) => (highest = Math.max(highest, r)),
      () => highest,
    );
  const timer = setInterval(() => void note(), everyMs);
  return {
    async stop() {
      clearInterval(timer);
      return Math.max(highest, await note());
    },
  };
}

async function treeOf(pid: number): Promise<number[]> {
  const kids = await readFile(`/proc/${pid}/task/${pid}/children`, "utf8").catch(() => "");
  const below = await Promise.all(
    kids
      .split(" ")
      .filter(Boolean)
      .map((k) => treeOf(Number(k))),
  );
  return [pid, ...below.flat()];
}

/**
 * Like sampleRss, for a process and its children together (os-update and
 * the xdelta3 it runs): the highest sum of their RSS seen, or the process's
 * own high-water mark (VmHWM, exact) when that is higher.
 */
export function sampleTreeRss(pid: number, everyMs: number): { stop(): Promise<number> } {
  let highest = 0;
  const note = async () => {
    try {
      const pids = await treeOf(pid);
      const sizes = await Promise.all(pids.map((p) => currentRss(p).catch(() => 0)));
      highest = Math.max(
        highest,
        await peakRss(pid),
        sizes.reduce((a, b) => a + b, 0),
      );
    } catch {
      // the process has exited
    }
    return highest;
  };
  const timer = setInterval(() => void note(), everyMs);
  return {
    async stop() {
      clearInterval(timer);
      return note();
    },
  };
}
