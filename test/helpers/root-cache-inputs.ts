import { parseImageDescription } from "../../src/core/image/description.ts";
import { baseRootInputs, type BaseRootInputs } from "../../src/core/image/root-cache.ts";

/** Base-root inputs of a small description, the same in every test process. */
export function fixedInputs(archive = "0".repeat(64)): BaseRootInputs {
  const desc = parseImageDescription("name: EOS\nversion: '1'\n", "cache-test.yaml");
  return baseRootInputs(desc, "x86_64", { "dists/bookworm/InRelease": archive }, 1686355200);
}
