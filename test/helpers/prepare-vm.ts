/**
 * Builds the vm tier's images ahead of it: scripts/test.sh starts this in the
 * background while the integration tier runs, so that the builds (mostly
 * mksquashfs) use the CPU that tier leaves idle. The vm tier then finds them in
 * its caches; if this failed, the vm tier builds them itself and reports why.
 *
 *   node --import tsx test/helpers/prepare-vm.ts
 */
import { buildDemoImages } from "../../src/io/demo.ts";
import { consoleContext } from "./context.ts";
import {
  demoTestOptions,
  demoTestOptionsAarch64,
  testImage,
  VM_TEST_IMAGE,
  VM_TEST_IMAGE_NEWER_BASE,
  vmSkipReason,
} from "./vm-image.ts";

const skip = vmSkipReason();
if (skip) {
  console.log(`prepare-vm: nothing built: ${skip}`);
} else {
  const t0 = performance.now();
  const lap = (what: string) =>
    console.log(`prepare-vm: ${what} (${((performance.now() - t0) / 1000).toFixed(0)} s)`);
  // Two chains side by side: the arm64 builds spend most of their time in one emulated
  // process (the root tree's update-initramfs under qemu-user), the x86_64 ones in mksquashfs.
  const x86 = async () => {
    const image = await testImage(VM_TEST_IMAGE);
    lap(`test image ${image.raw}${image.cached ? " (cached)" : ""}`);
    const newer = await testImage(VM_TEST_IMAGE_NEWER_BASE);
    lap(`test image with a newer basesystem ${newer.raw}${newer.cached ? " (cached)" : ""}`);
    const demo = await buildDemoImages(
      consoleContext(),
      demoTestOptions(() => {}),
    );
    lap(`demo images ${demo.map((d) => `${d.result.raw}${d.cached ? " (cached)" : ""}`).join(", ")}`);
  };
  const arm64 = async () => {
    const armSkip = vmSkipReason("aarch64");
    if (armSkip) return console.log(`prepare-vm: no arm64 images: ${armSkip}`);
    const demo = await buildDemoImages(
      consoleContext(),
      demoTestOptionsAarch64(() => {}),
    );
    lap(`arm64 demo images ${demo.map((d) => `${d.result.raw}${d.cached ? " (cached)" : ""}`).join(", ")}`);
  };
  const results = await Promise.allSettled([x86(), arm64()]);
  const failed = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
  for (const f of failed) console.log(`prepare-vm: failed: ${String(f.reason)}`);
  if (failed.length > 0) process.exitCode = 1;
}
