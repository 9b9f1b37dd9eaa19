/**
 * The delta path's memory on a device is bounded by constants, not by the
 * slot (issue 12 item 6: --apply's peak RSS ≤ 96 MiB with its children): the
 * decoder holds the source window (-B) and two target windows (-W, chosen by
 * the encoder), and os-update holds the delta itself. These must stay the
 * ones the server encodes with, and stay within what is left beside
 * os-update's own memory.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  DELTA_TARGET_WINDOW,
  DELTA_WINDOW,
  MAX_DELTA_BYTES,
  xdelta3DecodeArgv,
  xdelta3EncodeArgv,
} from "../../src/core/update/delta-index.ts";

const MiB = 1024 * 1024;

function option(argv: string[], flag: string): number | undefined {
  const at = argv.indexOf(flag);
  return at < 0 ? undefined : Number(argv[at + 1]);
}

test("the device's decoder runs in the bounded source window the server encodes with", () => {
  const decode = xdelta3DecodeArgv("/dev/loop7");
  const encode = xdelta3EncodeArgv("old.fs", "new.fs", "out.xd3");
  assert.equal(decode[0], "xdelta3");
  assert.equal(option(decode, "-B"), DELTA_WINDOW);
  assert.equal(option(encode, "-B"), DELTA_WINDOW);
  assert.equal(option(encode, "-W"), DELTA_TARGET_WINDOW);
  // The old root is the source; the new one goes to stdout (the target slot), never through os-update.
  assert.deepEqual(decode.slice(-2), ["-s", "/dev/loop7"]);
  assert.ok(decode.includes("-c"));
});

test("the decoder's windows and the delta held fit beside os-update in 96 MiB", () => {
  // bench/delta on the demo's pair: os-update itself peaks at 70 MiB on the delta path, and the
  // decoder's own code and buffers take ~6 MiB beyond its windows.
  const left = 96 * MiB - 70 * MiB - 6 * MiB;
  assert.ok(
    DELTA_WINDOW + 2 * DELTA_TARGET_WINDOW + MAX_DELTA_BYTES <= left,
    `windows ${DELTA_WINDOW} + 2 × ${DELTA_TARGET_WINDOW} and a delta of ${MAX_DELTA_BYTES} exceed ${left}`,
  );
});
