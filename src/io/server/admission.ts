/**
 * Which streams the server takes on: at most `maxStreams` over all clients
 * (more get 503) and `maxStreamsPerClient` per device (more get 429).
 */
import { HttpError } from "./http-answer.ts";
import type { StreamLimits } from "./send-range.ts";

/** Returns admit(client), which refuses or returns the stream's release; `onIdle` runs when the last ends. */
export function streamAdmission(
  limits: Pick<StreamLimits, "maxStreams" | "maxStreamsPerClient">,
  onIdle: () => void,
): (client: string) => () => void {
  const active = { total: 0, byClient: new Map<string, number>() };
  return (client) => {
    if (active.total >= limits.maxStreams)
      throw new HttpError(503, `the server streams to ${limits.maxStreams} clients already`, {
        "retry-after": "30",
      });
    const mine = active.byClient.get(client) ?? 0;
    if (mine >= limits.maxStreamsPerClient)
      throw new HttpError(
        429,
        `this device has ${mine} streams open already (at most ${limits.maxStreamsPerClient})`,
        { "retry-after": "10" },
      );
    active.total++;
    active.byClient.set(client, mine + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      active.total--;
      if (active.total === 0) onIdle();
      const left = (active.byClient.get(client) ?? 1) - 1;
      if (left > 0) active.byClient.set(client, left);
      else active.byClient.delete(client);
    };
  };
}
