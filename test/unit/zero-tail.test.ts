import { test } from "node:test";
import assert from "node:assert/strict";
import { DATA_PAGE, DataEnd } from "../../src/core/zero-tail.ts";

/** The data end of `bytes` fed in pieces of `piece` bytes. */
function dataEnd(bytes: Buffer, piece: number): number {
  const tracker = new DataEnd();
  for (let at = 0; at < bytes.length; at += piece) tracker.see(bytes.subarray(at, at + piece), at);
  return tracker.end;
}

test("the data ends after the last page that holds a non-zero byte, whatever the pieces", () => {
  const bytes = Buffer.alloc(64 * DATA_PAGE);
  assert.equal(dataEnd(bytes, 8 * DATA_PAGE), 0);
  bytes[5 * DATA_PAGE + 17] = 1;
  bytes[20 * DATA_PAGE] = 0xff;
  for (const piece of [DATA_PAGE, 8 * DATA_PAGE, bytes.length])
    assert.equal(dataEnd(bytes, piece), 21 * DATA_PAGE);
  bytes[bytes.length - 1] = 1;
  assert.equal(dataEnd(bytes, 8 * DATA_PAGE), bytes.length);
  // A partition whose size is not a page multiple: its last short page counts too.
  assert.equal(dataEnd(bytes.subarray(0, 10 * DATA_PAGE + 100), 4 * DATA_PAGE), 6 * DATA_PAGE);
  const short = Buffer.alloc(10 * DATA_PAGE + 100);
  short[short.length - 1] = 7;
  assert.equal(dataEnd(short, 4 * DATA_PAGE), short.length);
});
