import assert from "node:assert/strict";
import { test } from "node:test";
import { buildStepName } from "../../src/io/demo.ts";

test("the demo's first step names the description it builds, not always images/default.yaml", () => {
  assert.equal(
    buildStepName("/repo/images/aarch64.yaml", "/repo"),
    "build v1.0.0 (eos build images/aarch64.yaml)",
  );
  assert.equal(
    buildStepName("/repo/images/default.yaml", "/repo"),
    "build v1.0.0 (eos build images/default.yaml)",
  );
  // A description outside the checkout (or no checkout) is shown as given.
  assert.equal(buildStepName("/srv/my.yaml", "/repo"), "build v1.0.0 (eos build /srv/my.yaml)");
  assert.equal(buildStepName("/srv/my.yaml", undefined), "build v1.0.0 (eos build /srv/my.yaml)");
});
