import { test } from "node:test";
import assert from "node:assert/strict";
import {
  inWindow,
  nextOpening,
  parseWindow,
  windowFor,
  withGroupWindow,
  withoutGroup,
} from "../../src/core/fleet/window.ts";

// 2026-12-04 is a Friday.
const at = (iso: string) => new Date(`${iso}Z`);

test("a window that wraps across midnight belongs to the day it starts on", () => {
  const w = parseWindow("Fri 22:00-02:00");
  assert.equal(inWindow(w, at("2026-12-04T21:59")), false);
  assert.equal(inWindow(w, at("2026-12-04T22:00")), true);
  assert.equal(inWindow(w, at("2026-12-05T01:59")), true, "Saturday early is still Friday's window");
  assert.equal(inWindow(w, at("2026-12-05T02:00")), false);
  assert.equal(inWindow(w, at("2026-12-04T01:00")), false, "Friday early belongs to Thursday, not listed");
  assert.equal(inWindow(w, at("2026-12-05T22:30")), false);
});

test("weekday ranges, lists, every day, 24:00, several terms", () => {
  const w = parseWindow("Mon-Fri 09:00-17:00; Sat,Sun 00:00-24:00");
  assert.equal(inWindow(w, at("2026-12-04T16:59")), true);
  assert.equal(inWindow(w, at("2026-12-04T17:00")), false);
  assert.equal(inWindow(w, at("2026-12-06T23:59")), true, "Sunday, all day");
  assert.equal(inWindow(w, at("2026-12-07T08:59")), false, "Monday before nine");
  const weekend = parseWindow("Fri-Mon 03:00-04:00");
  assert.deepEqual(weekend.terms[0]?.days, [0, 1, 5, 6]);
  const daily = parseWindow("  23:30-00:30 ");
  assert.equal(daily.spec, "23:30-00:30");
  assert.equal(inWindow(daily, at("2026-12-02T00:10")), true);
});

test("the next opening, across the week", () => {
  const w = parseWindow("Mon-Fri 22:00-04:00");
  assert.deepEqual(nextOpening(w, at("2026-12-04T12:00")), at("2026-12-04T22:00"));
  assert.deepEqual(nextOpening(w, at("2026-12-05T12:00")), at("2026-12-07T22:00"), "Saturday: Monday night");
  assert.equal(nextOpening(w, at("2026-12-05T03:00")), undefined, "open (Friday's night)");
});

test("bad windows are refused naming what is wrong", () => {
  for (const [spec, why] of [
    ["", /1 to 500 characters/],
    ["Mon-Fri", /"Mon" is not a time HH:MM/],
    ["Mon 10:00", /"10:00" is not HH:MM-HH:MM/],
    ["Funday 10:00-11:00", /"Funday" is not a weekday/],
    ["25:00-26:00", /"25:00" is not a time/],
    ["10:00-10:00", /is empty/],
    ["24:00-01:00", /cannot start at 24:00/],
    ["Mon 10:00-11:00 x", /each term is/],
  ] as const)
    assert.throws(() => parseWindow(spec), why, spec);
});

test("a device's window is its first matching group's", () => {
  const groups = [
    { tags: ["lab", "canary"], window: "10:00-11:00" },
    { tags: ["lab"], window: "12:00-13:00" },
    { tags: [], window: "Sat 00:00-24:00" },
  ];
  assert.equal(windowFor(groups, ["canary", "lab"]), "10:00-11:00");
  assert.equal(windowFor(groups, ["lab"]), "12:00-13:00");
  assert.equal(windowFor(groups, []), "Sat 00:00-24:00");
  assert.equal(windowFor(groups.slice(0, 2), ["x"]), undefined);
});

test("setting a group's window: in place when it has one, else where its devices get it", () => {
  const groups = [
    { tags: ["lab", "site-a"], window: "01:00-02:00" },
    { tags: ["lab"], window: "02:00-03:00" },
    { tags: [], window: "03:00-04:00" },
  ];
  const changed = withGroupWindow(groups, ["site-a", "lab"], "05:00-06:00");
  assert.deepEqual(
    changed.map((g) => g.window),
    ["05:00-06:00", "02:00-03:00", "03:00-04:00"],
    "the same tags in another order are the same group: replaced where it stands",
  );
  // A new group would be shadowed by [lab] and by the default: it goes before them.
  const added = withGroupWindow(groups, ["lab", "night"], "22:00-23:00");
  assert.deepEqual(
    added.map((g) => g.tags),
    [["lab", "site-a"], ["lab", "night"], ["lab"], []],
  );
  assert.equal(windowFor(added, ["lab", "night"]), "22:00-23:00");
  assert.equal(windowFor(added, ["lab"]), "02:00-03:00", "the others keep theirs");
  // Nothing shadows it: appended. The default goes last, where it catches the rest.
  assert.deepEqual(withGroupWindow([{ tags: ["a"], window: "01:00-02:00" }], ["b"], "x").at(-1)?.tags, ["b"]);
  const withDefault = withGroupWindow(groups.slice(0, 2), [], "00:00-24:00");
  assert.deepEqual(withDefault.at(-1), { tags: [], window: "00:00-24:00" });
  assert.equal(windowFor(withDefault, ["lab"]), "02:00-03:00");
  assert.deepEqual(groups.length, 3, "the input is not changed");
});

test("clearing a group's window removes only that group; one it does not have is undefined", () => {
  const groups = [
    { tags: ["lab"], window: "02:00-03:00" },
    { tags: [], window: "03:00-04:00" },
  ];
  assert.deepEqual(withoutGroup(groups, []), [{ tags: ["lab"], window: "02:00-03:00" }]);
  assert.deepEqual(withoutGroup(groups, ["lab"]), [{ tags: [], window: "03:00-04:00" }]);
  assert.equal(withoutGroup(groups, ["lab", "x"]), undefined);
});
