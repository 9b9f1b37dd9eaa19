/** A process's CPU time and memory from /proc, for the benches' server figures. */
import { readFile, readlink } from "node:fs/promises";

/** Its user + system CPU seconds so far (/proc/PID/stat, in clock ticks of 1/100 s). */
export async function cpuSeconds(pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, "utf8")).split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/**
 * A process tree's CPU seconds so far: its own, its reaped children's
 * (cutime, cstime) and its live children's. A difference of two readings
 * then counts the children that came and went between them (PostgreSQL's
 * backends, whose parent is the postmaster).
 */
export async function treeCpuSeconds(pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, "utf8")).split(") ")[1]!.split(" ");
  const own = [11, 12, 13, 14].reduce((a, i) => a + Number(fields[i]), 0) / 100;
  const kids = await readFile(`/proc/${pid}/task/${pid}/children`, "utf8").catch(() => "");
  const below = await Promise.all(
    kids
      .split(" ")
      .filter(Boolean)
      .map((k) => treeCpuSeconds(Number(k)).catch(() => 0)),
  );
  return own + below.reduce((a, b) => a + b, 0);
}

/** The parent of a process (/proc/PID/stat): a PostgreSQL backend's is the postmaster. */
export async function parentOf(pid: number): Promise<number> {
  return Number((await readFile(`/proc/${pid}/stat`, "utf8")).split(") ")[1]!.split(" ")[1]);
}

/**
 * How long a process's main thread (a Node server's event loop) has waited
 * on a run queue for a CPU so far, in seconds (/proc/PID/schedstat).
 */
export async function runQueueWait(pid: number): Promise<number> {
  return Number((await readFile(`/proc/${pid}/schedstat`, "utf8")).split(" ")[1]) / 1e9;
}

/** CPU seconds the whole machine has been busy so far, all cores and processes (/proc/stat, less idle and iowait). */
export async function machineBusySeconds(): Promise<number> {
  const f = (await readFile("/proc/stat", "utf8")).split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is inside user already)
  return [0, 1, 2, 5, 6, 7].reduce((a, i) => a + (f[i] ?? 0), 0) / 100;
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

async function commOf(pid: number): Promise<string> {
  return (await readFile(`/proc/${pid}/comm`, "utf8").catch(() => "?")).trim();
}

async function exeOf(pid: number): Promise<string> {
  return readlink(`/proc/${pid}/exe`).catch(() => "?");
}

export interface TreeRss {
  /** What the device pays at worst: the process's own VmHWM plus the highest sum of its children's VmHWM among children alive at one time. */
  peak: number;
  /** The highest sum of current RSS seen at one sample (a lower bound). */
  sampled: number;
  /** The process's own VmHWM. */
  own: number;
  /** Each child command's highest VmHWM, e.g. { xdelta3: … }. */
  children: Record<string, number>;
}

/**
 * Like sampleRss, for a process and its children together (os-update and
 * the xdelta3 it runs). A peak between two samples is not lost: each
 * process's VmHWM is exact, and the figure adds the children's VmHWM to the
 * process's own, as if every child peaked at the process's peak (an upper
 * bound; os-update runs its children one at a time, so it is close).
 */
export function sampleTreeRss(pid: number, everyMs: number): { stop(): Promise<TreeRss> } {
  const result: TreeRss = { peak: 0, sampled: 0, own: 0, children: {} };
  let childrenPeak = 0;
  const note = async () => {
    try {
      const [tree, ownExe] = await Promise.all([treeOf(pid), exeOf(pid)]);
      // A child forked but not yet exec'd (still the parent's program) shares the parent's pages copy-on-write: not counted.
      const exes = await Promise.all(tree.slice(1).map(exeOf));
      const pids = [pid, ...tree.slice(1).filter((_, i) => exes[i] !== ownExe)];
      const [sizes, peaks, names] = await Promise.all([
        Promise.all(pids.map((p) => currentRss(p).catch(() => 0))),
        Promise.all(pids.map((p) => peakRss(p).catch(() => 0))),
        Promise.all(pids.map(commOf)),
      ]);
      result.sampled = Math.max(
        result.sampled,
        sizes.reduce((a, b) => a + b, 0),
      );
      result.own = Math.max(result.own, peaks[0] ?? 0);
      childrenPeak = Math.max(
        childrenPeak,
        peaks.slice(1).reduce((a, b) => a + b, 0),
      );
      names.slice(1).forEach((name, i) => {
        result.children[name] = Math.max(result.children[name] ?? 0, peaks[i + 1] ?? 0);
      });
      result.peak = Math.max(result.sampled, result.own + childrenPeak);
    } catch {
      // the process has exited
    }
  };
  const timer = setInterval(() => void note(), everyMs);
  return {
    async stop() {
      clearInterval(timer);
      await note();
      return result;
    },
  };
}
