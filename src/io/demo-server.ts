/**
 * The demo's update server: the images the demo published, its device
 * token, and the control plane on SQLite in the demo's work directory, so
 * that the device's reports of each step land where the demo can show them.
 */
import type { Server } from "node:http";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { DeviceEventType } from "../core/fleet/events.ts";
import type { Context } from "./context.ts";
import type { Logger } from "./log.ts";
import { openControlPlane } from "./server/fleet/open.ts";
import { createUpdateServer } from "./server/http.ts";
import type { PublishedImages } from "./server/published.ts";
import { TokenStore } from "./server/tokens.ts";

/** What the demo device reports on its way through the demo, in order. */
export const DEMO_REPORTS: readonly DeviceEventType[] = [
  "checked",
  "download_started",
  "written",
  "kexec",
  "committed",
  "rolled_back",
];

export interface DemoServer {
  server: Server;
  /** The types of the events `device` reported since `since`, oldest first. */
  reports(device: string, since: Date): Promise<DeviceEventType[]>;
  close(): Promise<void>;
}

export async function startDemoServer(
  ctx: Context,
  o: { store: PublishedImages; tokensDir: string; workDir: string; port: number; logger: Logger },
): Promise<DemoServer> {
  // The demo's own database, kept with its images; `os-update-server serve --state-dir` reads it.
  const fleet = await openControlPlane(
    ctx,
    { config: { update: [] }, path: "(eos demo)" },
    join(o.workDir, "server-state"),
    o.logger,
    o.store,
  );
  const server = createUpdateServer({
    store: o.store,
    tokens: new TokenStore(o.tokensDir),
    logger: o.logger,
    ...(fleet ? { control: fleet.control } : {}),
  });
  await new Promise<void>((res, rej) => {
    server.once("error", rej);
    server.listen(o.port, "127.0.0.1", () => res());
  });
  return {
    server,
    reports: async (device, since) => {
      const shown = await fleet?.store.device(device, 500);
      return (shown?.events ?? [])
        .filter((e) => Date.parse(e.received) >= since.getTime())
        .map((e) => e.type as DeviceEventType);
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((res) => server.close(() => res()));
      await fleet?.store.close();
    },
  };
}

/** Waits (at most `timeoutMs`) until every type in `want` is among the device's reports. */
export async function awaitReports(
  demo: DemoServer,
  device: string,
  since: Date,
  want: readonly DeviceEventType[],
  timeoutMs: number,
): Promise<DeviceEventType[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const seen = await demo.reports(device, since);
    if (want.every((t) => seen.includes(t)) || Date.now() > deadline) return seen;
    await sleep(2000);
  }
}
