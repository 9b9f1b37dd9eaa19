/**
 * A device's update source over several replicas of one server (update.url,
 * then update.mirrors): each request goes to the server in use; when that
 * one cannot be reached, answers with a server error, or a stream from it
 * breaks off or stalls, the next one takes over. The download loops above
 * (slot-writer.ts, chunk-apply.ts) resume at the byte they had, and the ETag
 * (the root's sha256 from the signed manifest) with If-Range keeps a resume
 * on another replica from splicing two versions. Every attempt stays bounded
 * by the sources' own timeouts and the callers' retries, stall and deadline.
 */
import type { Readable } from "node:stream";
import { EosError, errorMessage } from "../../core/errors.ts";
import type { UpdateSource } from "./source.ts";

/** Answers every replica would give alike: asking the next one changes nothing. */
const SAME_EVERYWHERE = new Set([
  "AUTH",
  "REVOKED",
  "NOT_FOUND",
  "HASH_MISMATCH",
  "SIGNATURE",
  "MANIFEST",
  "INTERRUPTED",
  "TIMEOUT",
]);

function switchable(error: unknown): boolean {
  return !(error instanceof EosError && SAME_EVERYWHERE.has(error.code));
}

export function mirroredSource(sources: UpdateSource[], log: (line: string) => void): UpdateSource {
  const first = sources[0];
  if (!first) throw new EosError("CONFIG", "update: no server to take updates from");
  if (sources.length === 1) return first;
  let at = 0;
  const current = () => sources[at] as UpdateSource;
  const moveOn = (from: UpdateSource, why: string) => {
    // Another request may have moved on already: move once per failed server.
    if (current() !== from) return;
    at = (at + 1) % sources.length;
    log(`${from.describe}: ${why}; continuing with ${current().describe}`);
  };
  /** One call, on the server in use and then each other one once. */
  async function call<T>(run: (s: UpdateSource) => Promise<T>): Promise<T> {
    let last: unknown;
    for (let tried = 0; tried < sources.length; tried++) {
      const s = current();
      try {
        return await run(s);
      } catch (error) {
        if (!switchable(error)) throw error;
        last = error;
        moveOn(s, errorMessage(error));
      }
    }
    throw last;
  }
  /** A stream that breaks off (the server died, the watchdog saw a stall) sends the next request elsewhere. */
  const watched = (s: UpdateSource, stream: Readable): Readable => {
    stream.once("error", (error) => {
      if (switchable(error)) moveOn(s, `the download broke off (${errorMessage(error)})`);
    });
    return stream;
  };
  const mirrored: UpdateSource = {
    describe: sources.map((s) => s.describe).join(" | "),
    fetchManifest: () => call((s) => s.fetchManifest()),
    fetchDeltaIndex: () => call((s) => s.fetchDeltaIndex()),
    openDelta: (from) => call(async (s) => watched(s, await s.openDelta(from))),
    openStream: (kind, offset, etag, end) =>
      call(async (s) => {
        const response = await s.openStream(kind, offset, etag, end);
        return { ...response, stream: watched(s, response.stream) };
      }),
  };
  if (first.fetchChunkIndex)
    mirrored.fetchChunkIndex = (maxBytes) =>
      call((s) => (s.fetchChunkIndex ? s.fetchChunkIndex(maxBytes) : Promise.resolve(undefined)));
  if (first.fetchAssignment)
    mirrored.fetchAssignment = (from) =>
      call((s) => (s.fetchAssignment ? s.fetchAssignment(from) : Promise.resolve(undefined)));
  return mirrored;
}
