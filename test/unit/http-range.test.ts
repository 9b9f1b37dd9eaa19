import { test } from "node:test";
import assert from "node:assert/strict";
import { parseRange } from "../../src/core/http-range.ts";

const SIZE = 1000;
const none = { kind: "none" };
const unsatisfiable = { kind: "unsatisfiable" };
const range = (start: number, end: number) => ({ kind: "range", start, end });

test("no Range header: the whole representation", () => {
  assert.deepEqual(parseRange(undefined, SIZE), none);
  assert.deepEqual(parseRange("", SIZE), none);
});

test("single range bytes=A-B, inclusive at both ends", () => {
  assert.deepEqual(parseRange("bytes=0-99", SIZE), range(0, 99));
  assert.deepEqual(parseRange("bytes=0-0", SIZE), range(0, 0));
  assert.deepEqual(parseRange("bytes=500-500", SIZE), range(500, 500));
  assert.deepEqual(parseRange("bytes=0-999", SIZE), range(0, 999));
  assert.deepEqual(parseRange("bytes=999-999", SIZE), range(999, 999));
  assert.deepEqual(parseRange("  bytes=10-19 ", SIZE), range(10, 19), "surrounding whitespace is ignored");
});

test("an end past the last byte is clipped to it", () => {
  assert.deepEqual(parseRange("bytes=0-1000", SIZE), range(0, 999));
  assert.deepEqual(parseRange("bytes=900-123456789", SIZE), range(900, 999));
});

test("open-ended bytes=A-: from A to the end (how a broken download resumes)", () => {
  assert.deepEqual(parseRange("bytes=0-", SIZE), range(0, 999));
  assert.deepEqual(parseRange("bytes=400-", SIZE), range(400, 999));
  assert.deepEqual(parseRange("bytes=999-", SIZE), range(999, 999));
});

test("suffix bytes=-N: the last N bytes, all of them when N is larger", () => {
  assert.deepEqual(parseRange("bytes=-1", SIZE), range(999, 999));
  assert.deepEqual(parseRange("bytes=-100", SIZE), range(900, 999));
  assert.deepEqual(parseRange("bytes=-1000", SIZE), range(0, 999));
  assert.deepEqual(parseRange("bytes=-5000", SIZE), range(0, 999));
});

test("out of range: a start at or past the end, or an empty suffix, is unsatisfiable (416)", () => {
  assert.deepEqual(parseRange("bytes=1000-", SIZE), unsatisfiable);
  assert.deepEqual(parseRange("bytes=1000-1000", SIZE), unsatisfiable);
  assert.deepEqual(parseRange("bytes=5000-6000", SIZE), unsatisfiable);
  assert.deepEqual(parseRange("bytes=-0", SIZE), unsatisfiable);
});

test("an end before the start is invalid and ignored: the whole representation (RFC 9110 §14.1.1)", () => {
  assert.deepEqual(parseRange("bytes=100-99", SIZE), none);
  assert.deepEqual(parseRange("bytes=999-0", SIZE), none);
});

test("multiple ranges are answered with the whole representation", () => {
  assert.deepEqual(parseRange("bytes=0-1,5-6", SIZE), none);
  assert.deepEqual(parseRange("bytes=0-99, 200-299", SIZE), none);
  assert.deepEqual(parseRange("bytes=-1,0-", SIZE), none);
});

test("malformed headers are ignored", () => {
  for (const header of [
    "bytes=",
    "bytes=-",
    "bytes=abc",
    "bytes=a-b",
    "bytes=1-2-3",
    "bytes=--1",
    "bytes=+1-2",
    "bytes=0x10-",
    "bytes=1.5-2",
    "bytes = 0-1",
    "bytes 0-1",
    "Bytes=0-1",
    "items=0-1",
    "0-1",
    "=0-1",
    "bytes=0-1;x",
    "bytes=0-1\nbytes=2-3",
  ]) {
    assert.deepEqual(parseRange(header, SIZE), none, JSON.stringify(header));
  }
});

test("what the server relies on: a range lies inside the representation and is never empty", () => {
  // update-http.ts sends `Content-Range: bytes start-end/size` and `end - start + 1` bytes from start.
  const sizes = [1, 2, 999, 1000, 1001, 4096];
  const numbers = ["", "0", "1", "2", "998", "999", "1000", "1001", "4095", "4096", "99999"];
  for (const size of sizes) {
    for (const first of numbers) {
      for (const last of numbers) {
        const header = `bytes=${first}-${last}`;
        const r = parseRange(header, size);
        if (r.kind !== "range") continue;
        const at = `${header} of ${size}`;
        assert.ok(Number.isSafeInteger(r.start) && Number.isSafeInteger(r.end), at);
        assert.ok(r.start >= 0, at);
        assert.ok(r.start <= r.end, at);
        assert.ok(r.end <= size - 1, at);
        if (first !== "") assert.equal(r.start, Number(first), `${at}: starts where asked`);
        if (first === "")
          assert.equal(r.end - r.start + 1, Math.min(Number(last), size), `${at}: suffix length`);
      }
    }
  }
});
