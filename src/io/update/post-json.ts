/**
 * A device's small JSON POST to its update server (reports, enrolment):
 * bearer token, a deadline over the whole exchange, and at most 4 KiB of
 * the answer kept, so a hostile server can neither hold nor flood it. With
 * replicas (update.mirrors), a POST that finds its server down goes to the
 * next one.
 */
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";

export interface PostAnswer {
  status: number;
  /** The server's typed error (x-eos-error), when it sent one. */
  error: string | undefined;
  /** The Retry-After header of a refusal (429, 503), as sent. */
  retryAfter: string | undefined;
  text: string;
}

const MAX_ANSWER = 4096;

export function postJson(
  url: URL,
  token: string,
  body: string,
  ca: Buffer | undefined,
  timeoutMs: number,
  extraHeaders: Record<string, string> = {},
): Promise<PostAnswer> {
  const request = url.protocol === "https:" ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: "POST",
        agent: false,
        ...(ca ? { ca } : {}),
        headers: {
          "content-type": "application/json",
          "content-length": Buffer.byteLength(body),
          authorization: `Bearer ${token}`,
          "user-agent": "eos-os-update",
          ...extraHeaders,
        },
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (s: string) => {
          if (text.length < MAX_ANSWER) text += s.slice(0, MAX_ANSWER - text.length);
        });
        res.on("end", () => {
          const error = res.headers["x-eos-error"];
          resolve({
            status: res.statusCode ?? 0,
            error: typeof error === "string" ? error : undefined,
            retryAfter: res.headers["retry-after"],
            text,
          });
        });
        res.on("error", reject);
      },
    );
    const timer = setTimeout(() => req.destroy(new Error("timed out")), timeoutMs);
    req.on("close", () => clearTimeout(timer));
    req.on("error", reject);
    req.end(body);
  });
}

/** A server that is down or overloaded: another replica may answer. Other answers (401, 429…) are everyone's. */
const elsewhere = (status: number) => status >= 500 || status === 408;

/** One POST of a body to whichever replica answers, within timeoutMs per replica tried. */
export type ReplicatedPost = (
  token: string,
  body: string,
  ca: Buffer | undefined,
  timeoutMs: number,
  extraHeaders?: Record<string, string>,
) => Promise<PostAnswer>;

/**
 * postJson over replicas of one server (update.url, then update.mirrors;
 * the same token, since they share the database): the POST goes to the
 * replica that answered last, and to each other one in turn when that one
 * cannot be reached or answers 5xx/408. Resolves with the first other
 * answer, else the last 5xx/408; throws only when no replica answered.
 */
export function replicatedPost(urls: readonly URL[], post: typeof postJson = postJson): ReplicatedPost {
  let at = 0;
  return async (token, body, ca, timeoutMs, extraHeaders) => {
    let last: { answer: PostAnswer } | { error: unknown } = { error: new Error("no server to post to") };
    for (let tried = 0; tried < urls.length; tried++) {
      const i = (at + tried) % urls.length;
      try {
        const answer = await post(urls[i] as URL, token, body, ca, timeoutMs, extraHeaders);
        last = { answer };
        if (elsewhere(answer.status)) continue;
        at = i;
        return answer;
      } catch (error) {
        last = { error };
      }
    }
    if ("answer" in last) return last.answer;
    throw last.error;
  };
}
