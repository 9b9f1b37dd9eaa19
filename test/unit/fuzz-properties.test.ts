/**
 * Property-based fuzzing (issue 11, "make it stay fixed"): every property of
 * test/helpers/fuzz-properties.ts, a few hundred runs each, a random seed per
 * run (FUZZ_SEED=S replays, FUZZ_RUNS=N runs more; bench/fuzz.ts runs long
 * campaigns). One file, so the module graph loads once.
 */
import { test } from "node:test";
import { assertFuzz, FUZZ_PROPERTIES } from "../helpers/fuzz-properties.ts";

/** Runs per property: the GPT round trip writes a disk image per run. */
const RUNS: Record<string, number> = { "gpt-roundtrip": 200 };

for (const { name } of FUZZ_PROPERTIES) {
  test(`fuzz: ${name}`, () => assertFuzz(name, RUNS[name] ?? 300));
}
