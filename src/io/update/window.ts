/**
 * The device's side of its maintenance window (core/fleet/window.ts): what
 * --check shows, and the stop of an --apply that has written and verified
 * the new root outside the window. That stop records the slot as staged
 * (io/update/staged.ts) but does not put it on trial, exits with its own
 * code, and is not a failure: the rollout does not count it against the wave.
 */
import { EosError } from "../../core/errors.ts";
import { inWindow, nextOpening, type MaintenanceWindow } from "../../core/fleet/window.ts";
import type { Manifest } from "../../core/manifest.ts";

/** os-update --apply's exit code when it stopped before switching because the window is closed. */
export const EXIT_OUTSIDE_WINDOW = 4;

export interface WindowState {
  parsed: MaintenanceWindow;
  open: boolean;
  /** When it opens next (ISO, UTC), when it is closed. */
  opens: string | undefined;
}

export function windowState(w: MaintenanceWindow, now: Date): WindowState {
  return { parsed: w, open: inWindow(w, now), opens: nextOpening(w, now)?.toISOString() };
}

/** For --check --json. */
export function windowJson(w: WindowState | undefined) {
  return w ? { spec: w.parsed.spec, timezone: "UTC", open: w.open, opens: w.opens ?? null } : null;
}

export function outsideWindow(w: WindowState, manifest: Manifest, slot: string): EosError {
  return new EosError(
    "WINDOW",
    `${manifest.version} is written and verified in slot ${slot}, but this device's maintenance window (${w.parsed.spec}, UTC) is closed: not switching to it` +
      (w.opens ? `; it opens at ${w.opens}` : "") +
      `. It stays staged there: --apply inside the window verifies it again and switches without downloading it`,
    { hint: "run os-update --apply again inside the window", exitCode: EXIT_OUTSIDE_WINDOW },
  );
}
