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
