/**
 * A device's reports over update.url and update.mirrors: a POST that finds
 * its server unreachable or answering 5xx/408 goes to the next replica,
 * which then stays first; answers every replica would give alike (401, 403,
 * 429, another 4xx) do not move on.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { replicatedPost, type PostAnswer } from "../../src/io/update/post-json.ts";

const urls = ["https://a.test/v1/events", "https://b.test/v1/events"].map((u) => new URL(u));

/** A fake postJson: each host answers with the status it is set to, or is unreachable (undefined). */
function servers(status: Record<string, number | undefined>) {
  const calls: string[] = [];
  const post = async (url: URL, token: string): Promise<PostAnswer> => {
    calls.push(`${url.hostname}:${token}`);
    const s = status[url.hostname];
    if (s === undefined) throw new Error(`${url.hostname}: connect ECONNREFUSED`);
    return { status: s, error: undefined, retryAfter: undefined, text: url.hostname };
  };
  return { calls, post };
}

const send = (post: ReturnType<typeof replicatedPost>) => post("tok", "{}", undefined, 5000);

test("an unreachable update.url hands the report to the mirror, which is asked first from then on", async () => {
  const s = servers({ "a.test": undefined, "b.test": 200 });
  const post = replicatedPost(urls, s.post);
  assert.equal((await send(post)).text, "b.test");
  s.calls.length = 0;
  assert.equal((await send(post)).text, "b.test");
  assert.deepEqual(s.calls, ["b.test:tok"], "the replica that answered is asked first, with the same token");
});

test("5xx and 408 move on to the next replica", async () => {
  for (const down of [500, 503, 408]) {
    const s = servers({ "a.test": down, "b.test": 200 });
    const answer = await send(replicatedPost(urls, s.post));
    assert.equal(answer.status, 200, `after ${down}`);
    assert.deepEqual(s.calls, ["a.test:tok", "b.test:tok"]);
  }
});

test("401, 403, 429 and other 4xx are every replica's answer: no other is asked", async () => {
  for (const refused of [401, 403, 429, 400, 413]) {
    const s = servers({ "a.test": refused, "b.test": 200 });
    assert.equal((await send(replicatedPost(urls, s.post))).status, refused);
    assert.deepEqual(s.calls, ["a.test:tok"], `after ${refused}`);
  }
});

test("with every replica down the last 5xx is the answer, or the error when none answered", async () => {
  const overloaded = servers({ "a.test": undefined, "b.test": 503 });
  assert.equal((await send(replicatedPost(urls, overloaded.post))).status, 503);
  const unreachable = servers({});
  await assert.rejects(send(replicatedPost(urls, unreachable.post)), /b\.test: connect ECONNREFUSED/);
  assert.deepEqual(unreachable.calls, ["a.test:tok", "b.test:tok"], "each replica tried once");
});
