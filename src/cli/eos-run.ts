/** `eos run IMAGE`: boot a disk image in QEMU (OVMF; KVM when it works, TCG otherwise). */
import type { Command } from "commander";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { parseSize } from "../core/image/description.ts";
import type { Context } from "../io/context.ts";
import { Vm } from "../io/machine/qemu.ts";
import { usageError } from "./main.ts";

interface RunOpts {
  sshPort?: string;
  sshKey?: string;
  tpm?: boolean;
  headless?: boolean;
  consoleLog?: string;
  memory: string;
  cpus: string;
  accel: string;
  work?: string;
  registrySize: string;
  diskSize?: string;
  waitSsh?: boolean;
}

function intOption(name: string, value: string, min: number, max: number): number {
  if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > max)
    throw usageError(`${name} ${value}: must be a whole number from ${min} to ${max}`);
  return Number(value);
}

function sizeOption(name: string, value: string): number {
  try {
    return value === "0" ? 0 : parseSize(value);
  } catch (error) {
    throw usageError(`${name} ${value}: ${(error as Error).message}`);
  }
}

export function registerRun(program: Command, ctx: Context, setResult: (code: number) => void): void {
  program
    .command("run")
    .description("boot a disk image in QEMU: the image stays untouched, writes go to a working disk")
    .argument("<image>", "disk image (NAME.raw) made by eos build")
    .option(
      "--ssh-port <port>",
      "host port (127.0.0.1) forwarded to the guest's SSH port; default: a free one",
    )
    .option("--ssh-key <file>", "private key for the SSH hint and --wait-ssh")
    .option("--tpm", "give the guest a TPM 2.0 (swtpm)")
    .option("--headless", "no terminal: log the console to a file (--console-log) and wait for QEMU to exit")
    .option(
      "--console-log <file>",
      "console log file in headless mode (default: WORK/console.log with --work, else ./NAME.console.log)",
    )
    .option("--memory <MiB>", "guest memory in MiB", "1024")
    .option("--cpus <n>", "guest CPUs", "2")
    .option("--accel <accel>", "auto, kvm or tcg (auto: KVM only if it really works here)", "auto")
    .option("--work <dir>", "working directory (disk overlay, OVMF variables, TPM state); kept when given")
    .option("--registry-size <size>", "size of the extra registry disk (0 for none)", "2G")
    .option("--disk-size <size>", "virtual size of the working disk (default: the image's size)")
    .option("--wait-ssh", "headless: print when SSH answers (needs --ssh-key)")
    .action(async (image: string, opts: RunOpts) => {
      if (!["auto", "kvm", "tcg"].includes(opts.accel))
        throw usageError(`--accel ${opts.accel}: auto, kvm or tcg`);
      const sshPort = opts.sshPort === undefined ? 0 : intOption("--ssh-port", opts.sshPort, 1, 65535);
      const work = opts.work ?? (await mkdtemp(join(tmpdir(), "eos-run-")));
      const interactive = !opts.headless;
      try {
        const vm = await Vm.start({
          image,
          workDir: work,
          sshPort,
          memoryMiB: intOption("--memory", opts.memory, 128, 65536),
          cpus: intOption("--cpus", opts.cpus, 1, 64),
          accel: opts.accel as "auto" | "kvm" | "tcg",
          tpm: Boolean(opts.tpm),
          registryDiskBytes: sizeOption("--registry-size", opts.registrySize),
          interactive,
          ...(opts.diskSize ? { diskBytes: sizeOption("--disk-size", opts.diskSize) } : {}),
          // A temporary work directory goes away at exit: keep the console log beside us.
          ...(opts.consoleLog
            ? { consoleLog: opts.consoleLog }
            : opts.work
              ? {}
              : { consoleLog: `${basename(image).replace(/\.raw$/, "")}.console.log` }),
          ...(opts.sshKey ? { sshKey: opts.sshKey } : {}),
        });
        const key = opts.sshKey ? `-i ${opts.sshKey} ` : "";
        ctx.stderr.write(
          `eos run: ${image} under ${vm.accel.toUpperCase()}${opts.tpm ? " with a TPM" : ""}; work ${work}\n` +
            `eos run: ssh ${key}-p ${vm.sshPort} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1\n` +
            (interactive
              ? "eos run: console on this terminal; Ctrl-A X quits QEMU\n"
              : `eos run: console log ${vm.consoleLog}\n`),
        );
        const onAbort = () => void vm.kill();
        ctx.signal.addEventListener("abort", onAbort, { once: true });
        if (!interactive) {
          void vm
            .waitForConsole(/Reached target.*Multi-User System/, { timeoutMs: 30 * 60_000 })
            .then(() => ctx.stderr.write(`eos run: multi-user.target after ${vm.uptime().toFixed(1)} s\n`))
            .catch(() => undefined);
          if (opts.waitSsh && opts.sshKey) {
            void vm
              .waitForSsh({ timeoutMs: 30 * 60_000 })
              .then(() => ctx.stderr.write(`eos run: SSH answers after ${vm.uptime().toFixed(1)} s\n`))
              .catch(() => undefined);
          }
        }
        const code = await vm.exited;
        ctx.signal.removeEventListener("abort", onAbort);
        ctx.stderr.write(`eos run: QEMU exited (${code ?? "signal"}) after ${vm.uptime().toFixed(1)} s\n`);
        // QEMU exits 0 when the guest powers off; anything else is passed on.
        setResult(ctx.signal.aborted ? 130 : (code ?? 1));
      } finally {
        if (!opts.work) await rm(work, { recursive: true, force: true });
      }
    });
}
