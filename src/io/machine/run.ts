/**
 * `eos run`: boot a disk image in QEMU and stay with it until it powers off.
 * The image is never written (a qcow2 overlay takes the writes); a console
 * on the terminal, or logged with the boot milestones when headless.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { EosError } from "../../core/errors.ts";
import type { Architecture } from "../../core/image/arch.ts";
import type { Context } from "../context.ts";
import { imageArchitecture } from "../disk-image.ts";
import { Vm, type VmOptions } from "./qemu.ts";
import { LOGIN_OR_SHELL } from "../../core/machine/qemu-machine.ts";

export interface RunImageOptions extends Omit<
  VmOptions,
  "workDir" | "interactive" | "consoleLog" | "proc" | "image"
> {
  image: string;
  /** --arch; default: what the image's slot type says (x86_64 for a disk that says nothing). */
  architecture?: Architecture | undefined;
  /** Kept when given; else a temporary directory removed at exit. */
  work?: string | undefined;
  headless: boolean;
  consoleLog?: string | undefined;
  waitSsh: boolean;
}

/** Boots and waits for QEMU to exit; returns QEMU's exit code (130 when stopped by a signal). */
export async function runImage(ctx: Context, o: RunImageOptions): Promise<number> {
  const work = o.work ?? (await mkdtemp(join(tmpdir(), "eos-run-")));
  const interactive = !o.headless;
  const say = (line: string) => ctx.stderr.write(`eos run: ${line}\n`);
  try {
    const fromImage = await imageArchitecture(o.image).catch(() => undefined);
    if (o.architecture && fromImage && o.architecture !== fromImage)
      throw new EosError("USAGE", `--arch ${o.architecture}: ${o.image} is an ${fromImage} image`, {
        hint: `leave out --arch, or pass --arch ${fromImage}`,
      });
    const architecture = o.architecture ?? fromImage ?? "x86_64";
    const { work: _work, headless: _headless, waitSsh: _waitSsh, ...vmOptions } = o;
    const vm = await Vm.start({
      ...vmOptions,
      architecture,
      workDir: work,
      interactive,
      proc: ctx.proc,
      // A temporary work directory goes away at exit: keep the console log beside us.
      ...(o.consoleLog
        ? { consoleLog: o.consoleLog }
        : o.work
          ? {}
          : { consoleLog: `${basename(o.image).replace(/\.raw$/, "")}.console.log` }),
    });
    const key = o.sshKey ? `-i ${o.sshKey} ` : "";
    say(
      `${o.image} (${architecture}) under ${vm.accel.toUpperCase()}${o.tpm ? " with a TPM" : ""}; work ${work}`,
    );
    say(
      `ssh ${key}-p ${vm.sshPort} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1`,
    );
    say(interactive ? "console on this terminal; Ctrl-A X quits QEMU" : `console log ${vm.consoleLog}`);
    const onAbort = () => void vm.kill();
    ctx.signal.addEventListener("abort", onAbort, { once: true });
    if (!interactive) {
      void vm
        .waitForConsole(/Reached target.*Multi-User System/, { timeoutMs: 30 * 60_000 })
        .then(() => say(`multi-user.target after ${vm.uptime().toFixed(1)} s`))
        .catch(() => undefined);
      void vm
        .waitForConsole(LOGIN_OR_SHELL, { timeoutMs: 30 * 60_000 })
        .then(() => say(`login prompt (or autologin shell) after ${vm.uptime().toFixed(1)} s`))
        .catch(() => undefined);
      if (o.waitSsh && o.sshKey) {
        void vm
          .waitForSsh({ timeoutMs: 30 * 60_000 })
          .then(() => say(`SSH answers after ${vm.uptime().toFixed(1)} s`))
          .catch(() => undefined);
      }
    }
    const code = await vm.exited;
    ctx.signal.removeEventListener("abort", onAbort);
    say(`QEMU exited (${code ?? "signal"}) after ${vm.uptime().toFixed(1)} s`);
    // QEMU exits 0 when the guest powers off; anything else is passed on.
    return ctx.signal.aborted ? 130 : (code ?? 1);
  } finally {
    if (!o.work) await rm(work, { recursive: true, force: true });
  }
}
