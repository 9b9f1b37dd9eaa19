import { test } from "node:test";
import assert from "node:assert/strict";
import { canonicalize, isCanonical } from "../../src/core/canonical-json.ts";

test("keys are sorted at every depth and whitespace is dropped", () => {
  assert.equal(
    canonicalize({ b: 1, a: { d: [3, { z: true, y: null }], c: "x" } }),
    '{"a":{"c":"x","d":[3,{"y":null,"z":true}]},"b":1}',
  );
});

test("undefined members are omitted; floats and non-JSON values are refused", () => {
  assert.equal(canonicalize({ a: undefined, b: 2 }), '{"b":2}');
  assert.throws(() => canonicalize({ a: 1.5 }), /safe integers/);
  assert.throws(() => canonicalize({ a: () => 1 }), /cannot encode a function/);
});

test("isCanonical tells canonical text from equivalent text", () => {
  assert.equal(isCanonical('{"a":1,"b":2}'), true);
  assert.equal(isCanonical('{"b":2,"a":1}'), false);
  assert.equal(isCanonical('{"a": 1}'), false);
  assert.equal(isCanonical("not json"), false);
});
