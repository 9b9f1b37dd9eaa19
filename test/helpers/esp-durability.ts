/**
 * Bundles test/helpers/esp-durability-probe.ts for a guest and runs it there
 * over SSH (the host's kernel here has no vfat: the guest's has).
 */
import { build } from "esbuild";
import { fileURLToPath } from "node:url";
import type { Vm } from "../../src/io/machine/qemu.ts";

export interface ProbeRound {
  round: number;
  wrote: string;
  onDisk: string;
  fsckClean: boolean;
  fsck: string;
}

export async function runEspDurabilityProbe(vm: Vm, rounds: number): Promise<ProbeRound[]> {
  const bundle = await build({
    entryPoints: [fileURLToPath(new URL("./esp-durability-probe.ts", import.meta.url))],
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node18",
    write: false,
    logLevel: "warning",
  });
  const code = bundle.outputFiles[0]?.contents;
  if (!code) throw new Error("esbuild produced no probe bundle");
  await vm.sshOk(["sh", "-c", "mkdir -p /run/esp-probe && cat > /run/esp-probe/probe.mjs"], {
    input: Buffer.from(code),
  });
  const out = await vm.sshOk(["node", "/run/esp-probe/probe.mjs", "/run/esp-probe", String(rounds)], {
    timeoutMs: 300_000,
  });
  await vm.sshOk(["rm", "-rf", "/run/esp-probe"]);
  return out
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line) as ProbeRound);
}
