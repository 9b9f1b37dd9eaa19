import type { Writable } from "node:stream";

export { formatBytes } from "../core/bytes.ts";
import { formatBytes } from "../core/bytes.ts";

function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "--:--";
  const s = Math.round(seconds);
  const m = Math.floor(s / 60);
  return `${String(m).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
}

export interface Progress {
  add(bytes: number): void;
  done(): void;
}

/**
 * Bytes, rate and ETA. On a terminal one line is redrawn a few times a
 * second; otherwise a plain line is logged every `plainEverySeconds`, so CI
 * logs and journald stay readable.
 */
export function progress(
  out: Writable,
  label: string,
  total: number | undefined,
  options: { interactive: boolean; now?: () => number; plainEverySeconds?: number },
): Progress {
  const now = options.now ?? (() => performance.now());
  const start = now();
  let bytes = 0;
  let lastDraw = 0;
  const every = options.interactive ? 200 : (options.plainEverySeconds ?? 5) * 1000;
  const line = () => {
    const elapsed = (now() - start) / 1000;
    const rate = elapsed > 0 ? bytes / elapsed : 0;
    const pct = total ? ` ${((bytes / total) * 100).toFixed(1)}%` : "";
    const eta = total && rate > 0 ? ` ETA ${formatEta((total - bytes) / rate)}` : "";
    const of = total ? ` of ${formatBytes(total)}` : "";
    return `${label}: ${formatBytes(bytes)}${of}${pct} ${formatBytes(rate)}/s${eta}`;
  };
  const draw = (final: boolean) => {
    if (options.interactive) out.write(`\r\x1b[K${line()}${final ? "\n" : ""}`);
    else out.write(`${line()}\n`);
  };
  return {
    add(n: number) {
      bytes += n;
      const t = now();
      if (t - lastDraw >= every) {
        lastDraw = t;
        draw(false);
      }
    },
    done() {
      draw(true);
    },
  };
}
