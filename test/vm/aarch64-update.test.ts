/**
 * The update cycle on arm64, in one emulated boot sequence: the minimal arm64
 * image (images/aarch64-minimal.yaml) boots v1 from slot A in
 * qemu-system-aarch64 (-M virt, AAVMF; TCG on this x86_64 machine), checks,
 * applies v2 (the same root with a new version, so one emulated base root
 * serves both), kexecs into slot B's arm64 Image and commits it. The same
 * runDemo as `eos demo --arch aarch64`, stopped after the commit: the rollback
 * and the power cuts are the x86_64 test's, on the same code.
 */
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { runDemo, type DemoResult } from "../../src/io/demo.ts";
import { DEMO_REPORTS } from "../../src/io/demo-server.ts";
import { consoleContext } from "../helpers/context.ts";
import { demoTestOptionsAarch64, vmSkipReason } from "../helpers/vm-image.ts";
import type { Vm } from "../../src/io/machine/qemu.ts";

const skip = vmSkipReason("aarch64");
if (skip) process.stdout.write(`# arm64 vm test skipped: ${skip}\n`);

describe(
  "update cycle on arm64 (qemu-system-aarch64): check, apply, kexec, commit",
  { skip, timeout: 45 * 60_000 },
  () => {
    let demo: DemoResult;

    before(async () => {
      demo = await runDemo(consoleContext(), {
        ...demoTestOptionsAarch64((line) => process.stdout.write(`# ${line}\n`)),
        keepVm: true,
      });
    });
    after(async () => {
      await demo?.vm?.kill();
      await demo?.close();
    });

    it("both images are arm64 by their signed manifests", () => {
      assert.equal(demo.v1.architecture, "aarch64");
      assert.equal(demo.v2.architecture, "aarch64");
    });

    it("v1 boots from slot A and sees v2 on offer (--check exits 1)", () => {
      const s = demo.states.booted;
      assert.equal(s.version, "1.0.0", "VERSION in /etc/os-release");
      assert.equal(s.slot, "A", `slot on the kernel command line: ${s.cmdline}`);
      assert.equal(s.grubenv.eos_default, "A");
      assert.equal(s.checkExit, 1, "os-update --check exit code");
      assert.doesNotMatch(s.cmdline, /COMMIT_UPDATE/);
    });

    it("--apply kexecs into slot B with COMMIT_UPDATE, from a delta; update_commit.service makes B the default", () => {
      const s = demo.states.updated;
      assert.equal(s.version, "2.0.0", "VERSION in /etc/os-release");
      assert.equal(s.slot, "B", `slot on the kernel command line: ${s.cmdline}`);
      assert.match(s.cmdline, /COMMIT_UPDATE/, "the trial boot came from os-update's kexec");
      assert.equal(s.grubenv.eos_default, "B", "default slot in the boot control block");
      assert.equal(s.grubenv.eos_trial, "", "nothing on trial after the commit");
      assert.equal(s.grubenv.eos_B_version, "2.0.0");
      assert.equal(s.grubenv.eos_B_sha256, demo.v2.rootSha256);
      assert.equal(s.checkExit, 0, "up to date after the commit");
      assert.match(
        demo.steps.find((st) => st.name.startsWith("update_commit"))?.detail ?? "",
        /update_commit\.service active \(success\)/,
      );
      const applied = demo.steps.find((st) => st.name.includes("os-update --apply"))?.detail ?? "";
      const m = /from (\d+) bytes downloaded \(delta\)/.exec(applied);
      assert.ok(m, `the apply took the delta path: ${applied}`);
      assert.ok(Number(m[1]) < demo.v2.rootFsBytes / 10, `the delta is small: ${applied}`);
    });

    it("the kernel that runs slot B is arm64, and the device reported each step to the server", async () => {
      const vm = demo.vm as Vm;
      assert.equal((await vm.sshOk(["uname", "-m"])).trim(), "aarch64");
      const wanted = DEMO_REPORTS.filter((t) => t !== "rolled_back");
      const firsts = wanted.map((type) => demo.reports.indexOf(type));
      assert.ok(
        firsts.every((at, i) => at >= 0 && (i === 0 || at > (firsts[i - 1] as number))),
        `reported: ${demo.reports.join(" ")}; wanted, in this order: ${wanted.join(" ")}`,
      );
      assert.ok(!demo.reports.includes("failed"), demo.reports.join(" "));
      assert.equal(demo.states.rolledBack, undefined, "the arm64 cycle stops after the commit");
    });
  },
);
