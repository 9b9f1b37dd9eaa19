import { test } from "node:test";
import assert from "node:assert/strict";
import {
  FORM_FIELDS,
  fieldError,
  initialValues,
  newRolloutPage,
  parseRolloutForm,
  type FormValues,
} from "../../src/core/fleet/ui/rollout-form.ts";
import { rolloutsPage } from "../../src/core/fleet/ui/rollouts.ts";

const operator = { name: "ops", role: "operator", csrf: "c".repeat(43) };
const viewer = { name: "watcher", role: "viewer", csrf: "v".repeat(43) };
const IMAGES = [
  {
    name: "EOS",
    versions: [
      { version: "2.0.0", current: true },
      { version: "1.0.0", current: false },
    ],
  },
];
const PAYLOAD = `"><script>alert(1)</script>`;

const submitted = (o: Partial<FormValues>) =>
  new URLSearchParams({ ...initialValues(IMAGES), waves: "1%, 10%, 100%", ...o });

test("the form starts at the current version with `rollout create`'s defaults", () => {
  assert.deepEqual(initialValues(IMAGES), {
    release: "EOS/2.0.0",
    previous: "",
    tags: "",
    waves: "",
    soak: "1h",
    error_threshold: "10%",
    success_threshold: "90%",
    id: "",
  });
  const html = newRolloutPage({ viewer: operator, images: IMAGES, values: initialValues(IMAGES) });
  assert.match(
    html,
    new RegExp(
      `<form method="post" action="/ui/rollouts/new"[^>]*>\\s*<input type="hidden" name="csrf" value="${operator.csrf}">`,
    ),
  );
  assert.match(html, /<option value="EOS\/2\.0\.0" selected>EOS 2\.0\.0 \(current\)<\/option>/);
  // Every field the form reads has a label tied to its control.
  for (const field of FORM_FIELDS)
    assert.match(
      html,
      new RegExp(`<label for="f-${field}">[^<]+</label>\\s*<(input|select) id="f-${field}"`),
    );
});

test("the form's text becomes the admin API's create body, read as the CLI reads its options", () => {
  const { body, errors } = parseRolloutForm(
    submitted({ tags: "lab, eu  west", waves: "tag:canary, 50%,100%", soak: "30m", id: "r2" }),
  );
  assert.deepEqual(errors, []);
  assert.deepEqual(body, {
    image: "EOS",
    version: "2.0.0",
    id: "r2",
    tags: ["lab", "eu", "west"],
    waves: "tag:canary, 50%,100%",
    soak_seconds: 1800,
    error_threshold: 0.1,
    success_threshold: 0.9,
  });
  assert.equal(parseRolloutForm(submitted({ soak: "0", previous: "1.0.0" })).body?.soak_seconds, 0);
  assert.equal(parseRolloutForm(submitted({ previous: "1.0.0" })).body?.previous, "1.0.0");
});

test("every bad field is named, by its label, and shown beside it; nothing is created", () => {
  const { body, errors, values } = parseRolloutForm(
    submitted({ waves: "abc", soak: "soon", error_threshold: "150%", tags: "a/b", release: "" }),
  );
  assert.equal(body, undefined);
  assert.deepEqual(
    errors.map((e) => e.field),
    ["release", "tags", "waves", "soak", "error_threshold"],
  );
  assert.match(errors.find((e) => e.field === "waves")?.message ?? "", /^Waves\[0\]: "abc" is neither/);
  assert.match(errors.find((e) => e.field === "soak")?.message ?? "", /^Soak time per wave: /);
  assert.equal(values.waves, "abc", "the operator's text is kept to correct it");
  const html = newRolloutPage({ viewer: operator, images: IMAGES, values, errors });
  assert.match(html, /role="alert"/);
  assert.match(
    html,
    /<input id="f-waves" name="waves" value="abc" aria-describedby="help-waves error-waves"\s+aria-invalid="true"/,
  );
  assert.match(html, /<p id="error-waves" class="error">Waves\[0\]: &quot;abc&quot; is neither/);
  assert.match(html, /<a href="#f-waves">Waves\[0\]/);
});

test("the create path's refusals are shown against the form's field, in the form's words", () => {
  assert.deepEqual(fieldError("version: EOS 9 is not published on this server"), {
    field: "release",
    message: "Version to roll out: EOS 9 is not published on this server",
  });
  assert.deepEqual(fieldError("soak_seconds: Too big"), {
    field: "soak",
    message: "Soak time per wave: Too big",
  });
  assert.deepEqual(fieldError("tags[2]: not a tag"), { field: "tags", message: "Device tags[2]: not a tag" });
  assert.deepEqual(fieldError("something else"), { field: undefined, message: "something else" });
});

test("submitted values are escaped when the form is shown again", () => {
  const { values, errors } = parseRolloutForm(submitted({ waves: PAYLOAD, id: PAYLOAD }));
  const html = newRolloutPage({ viewer: operator, images: IMAGES, values, errors });
  assert.doesNotMatch(html, /<script>alert/);
});

test("only an operator gets the link to a new rollout", () => {
  assert.match(rolloutsPage({ viewer: operator, rollouts: [] }), /href="\/ui\/rollouts\/new"/);
  assert.doesNotMatch(rolloutsPage({ viewer, rollouts: [] }), /\/ui\/rollouts\/new/);
});
