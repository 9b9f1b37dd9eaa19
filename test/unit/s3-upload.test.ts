import { test } from "node:test";
import assert from "node:assert/strict";
import { EosError } from "../../src/core/errors.ts";
import { DEFAULT_PART_SIZES, partSizeFor, partSizes } from "../../src/io/server/s3-upload.ts";

const MiB = 1 << 20;

test("multipart sizes: 16 MiB parts above 64 MiB, EOS_S3_PART_BYTES (tests) sets parts above 4 times it", () => {
  assert.deepEqual(partSizes({}), { threshold: 64 * MiB, partSize: 16 * MiB });
  assert.deepEqual(partSizes({ EOS_S3_PART_BYTES: "" }), DEFAULT_PART_SIZES);
  assert.deepEqual(partSizes({ EOS_S3_PART_BYTES: String(MiB) }), { threshold: 4 * MiB, partSize: MiB });
  for (const bad of ["1k", "-1", "1000", "65536.5"])
    assert.throws(
      () => partSizes({ EOS_S3_PART_BYTES: bad }),
      (e: unknown) =>
        e instanceof EosError && e.code === "USAGE" && e.message.startsWith("EOS_S3_PART_BYTES"),
      bad,
    );
});

test("an object that would take more than 10,000 parts gets larger parts, whole MiB", () => {
  assert.equal(partSizeFor(100 * MiB, DEFAULT_PART_SIZES), 16 * MiB);
  assert.equal(partSizeFor(10_000 * 16 * MiB, DEFAULT_PART_SIZES), 16 * MiB);
  const big = 10_000 * 16 * MiB + 1;
  assert.equal(partSizeFor(big, DEFAULT_PART_SIZES), 17 * MiB);
  assert.ok(Math.ceil(big / partSizeFor(big, DEFAULT_PART_SIZES)) <= 10_000);
});
