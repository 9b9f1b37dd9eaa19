/**
 * bench/fuzz: long fuzz campaigns over the properties the unit tier runs a
 * few hundred times each (test/helpers/fuzz-properties.ts). Prints the seed
 * (pass it back with --seed to replay), runs per second for each property,
 * and any counterexample with fast-check's replay path.
 *
 *   node --import tsx bench/fuzz.ts [--runs N] [--seed S] [--only NAME[,NAME…]] [--time-limit SECONDS]
 *
 * Exit code 1 when a property failed.
 */
import { parseArgs } from "node:util";
import fc from "fast-check";
import { FUZZ_PROPERTIES } from "../test/helpers/fuzz-properties.ts";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "20000" },
    seed: { type: "string" },
    only: { type: "string" },
    "time-limit": { type: "string", default: "300" },
  },
});

const runs = Number(values.runs);
const seed =
  values.seed !== undefined ? Number(values.seed) : (Date.now() ^ (Math.random() * 0x100000000)) | 0;
const limitMs = Number(values["time-limit"]) * 1000;
if (!Number.isInteger(runs) || runs <= 0 || !Number.isInteger(seed) || !(limitMs > 0)) {
  process.stderr.write("usage: bench/fuzz.ts [--runs N] [--seed S] [--only NAME] [--time-limit SECONDS]\n");
  process.exit(2);
}
const wanted = values.only?.split(",").filter(Boolean);
const selected = wanted ? FUZZ_PROPERTIES.filter((p) => wanted.includes(p.name)) : FUZZ_PROPERTIES;
if (wanted && selected.length !== wanted.length) {
  process.stderr.write(`unknown property; known: ${FUZZ_PROPERTIES.map((p) => p.name).join(", ")}\n`);
  process.exit(2);
}

process.stdout.write(
  `fuzz: seed ${seed}, up to ${runs} runs and ${limitMs / 1000} s per property (replay: --seed ${seed} --only NAME)\n`,
);
let failed = 0;
for (const p of selected) {
  const started = performance.now();
  const details = await p.check({
    numRuns: runs,
    seed,
    timeout: 10_000,
    interruptAfterTimeLimit: limitMs,
    markInterruptAsFailure: false,
  });
  const seconds = (performance.now() - started) / 1000;
  const rate = details.numRuns / seconds;
  const status = details.failed ? "FAILED" : details.interrupted ? "ok (time limit)" : "ok";
  process.stdout.write(
    `${p.name.padEnd(20)} ${String(details.numRuns).padStart(8)} runs ${seconds.toFixed(1).padStart(7)} s ${rate.toFixed(0).padStart(8)} runs/s  ${status}\n`,
  );
  if (details.failed) {
    failed++;
    process.stdout.write(`${fc.defaultReportMessage(details)}\n`);
  }
}
process.stdout.write(`${selected.length - failed} passed, ${failed} failed\n`);
process.exitCode = failed ? 1 : 0;
