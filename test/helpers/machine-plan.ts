import type { MachinePlan } from "../../src/core/machine/qemu-machine.ts";

/** The least MachinePlan machineArgv takes: tests add the part they look at. */
export const MINIMAL_PLAN: MachinePlan = {
  accel: "tcg",
  cpus: 1,
  memoryMiB: 512,
  firmwareCode: "/code.fd",
  firmwareVars: "/vars.fd",
  disk: "/d.qcow2",
  sshPort: 2222,
  interactive: false,
};
