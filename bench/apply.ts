/**
 * bench/apply: `os-update --apply` streaming a root from the update server
 * into slot B of a loop device, beside the original's way (`curl … | dd
 * of=<slot> bs=4M conv=fsync`) writing the same bytes to the same device in
 * the same run. --apply's time includes verifying: hashing while writing, and
 * re-reading the slot after fsync. Also: `os-update --check` wall time with
 * a warm per-boot cache, as a process (node start included) and in-process.
 *
 *   node --import tsx bench/apply.ts [ROOT_MiB]   (default 256)
 */
import { startServer } from "../test/helpers/serve.ts";
import { copyFile, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { DIST, runEos, mustRun } from "../test/helpers/run.ts";
import { makeWorld, releaseImage, writeServerConfig } from "../test/helpers/server-world.ts";
import { makeDevice } from "../test/helpers/device.ts";

const rootMiB = Number(process.argv[2] ?? 256);
const NAME = "EOS.bench";
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

const world = await makeWorld();
const server = { kill: (_s: string) => undefined as unknown };
try {
  await writeServerConfig(world, [{ image: `${world.origin.url}/${NAME}.raw.zst`, name: NAME }]);
  const zstd = async (p: string) => {
    await mustRun("zstd", ["-q", "-f", "-1", "-T0", p, "-o", `${p}.zst`]);
    return `${p}.zst`;
  };
  const v1 = await releaseImage(world, NAME, "1", {
    rootSizeMiB: rootMiB,
    payloadBytes: 4 * 1024 * 1024,
    compress: zstd,
  });
  const v1Manifest = JSON.parse(await readFile(`${v1}.manifest.json`, "utf8")) as {
    version: string;
    partitions: { root: { sha256: string; size: number } };
  };
  await copyFile(v1, join(world.dir, "device.raw"));
  await releaseImage(world, NAME, "2", {
    rootSizeMiB: rootMiB,
    payloadBytes: (rootMiB - 8) * 1024 * 1024,
    compress: zstd,
  });
  const fetched = await runEos("os-update-server", ["fetch", "--config", world.config]);
  if (fetched.code !== 0) throw new Error(fetched.stderr);
  const { child, url } = await startServer({ config: world.config });
  server.kill = (s) => child.kill(s as NodeJS.Signals);
  child.stdout?.resume();
  const device = await makeDevice(join(world.dir, "device.raw"), v1Manifest, {
    config: `update:\n  name: ${NAME}\n  url: ${url}\n`,
    keys: [join(world.keysDir, "release.pub")],
  });
  try {
    const slotB = `${device.loop}p3`;
    const rootUrl = `${url}/v1/images/${NAME}/root`;
    const warm = await device.run(["--check"]);
    if (warm.code !== 1) throw new Error(`check: ${warm.stdout}${warm.stderr}`);
    const applyTimes: number[] = [];
    const writeTimes: number[] = [];
    const ddTimes: number[] = [];
    const reset = async () => {
      const env = await device.grubenv();
      for (const [k, v] of Object.entries({
        eos_trial: "",
        eos_tries: "0",
        eos_B_version: "",
        eos_B_sha256: "",
        eos_B_size: "",
      }))
        env.set(k, v);
      const { writeBootControl } = await import("../src/io/update/boot-control.ts");
      await writeBootControl(device.esp, env);
      await mustRun("blockdev", ["--flushbufs", device.loop]);
    };
    for (let round = 0; round < 3; round++) {
      await reset();
      let t = performance.now();
      const r = await device.run(["--apply"]);
      if (r.code !== 0) throw new Error(r.stderr);
      applyTimes.push((performance.now() - t) / 1000);
      const m = /wrote [\d.]+ MiB in ([\d.]+) s/.exec(r.stdout);
      if (!m) throw new Error(`no timing in: ${r.stdout}`);
      writeTimes.push(Number(m[1]));
      await reset();
      t = performance.now();
      const dd = spawnSync("sh", [
        "-c",
        'curl -sf "$1" | dd of="$2" bs=4M iflag=fullblock conv=fsync status=none',
        "sh",
        rootUrl,
        slotB,
      ]);
      if (dd.status !== 0) throw new Error(`dd: ${dd.stderr.toString()}`);
      ddTimes.push((performance.now() - t) / 1000);
    }
    const mib = rootMiB;
    const a = median(applyTimes);
    const d = median(ddTimes);
    const w = median(writeTimes);
    console.log(`bench/apply: ${mib} MiB root over HTTP (loopback) into a loop-device slot, median of 3`);
    console.log(`baseline curl | dd bs=4M conv=fsync: ${d.toFixed(2)} s, ${(mib / d).toFixed(0)} MiB/s`);
    console.log(
      `--apply writing (download, write, fsync): ${w.toFixed(2)} s, ${(mib / w).toFixed(0)} MiB/s, ratio to dd ${(d / w).toFixed(2)}`,
    );
    console.log(
      `--apply whole command (+ re-read and verify, manifest, boot control): ${a.toFixed(2)} s, ratio to dd ${(d / a).toFixed(2)}`,
    );

    await device.boot("A"); // a new boot: --check computes and caches the running root's hash once
    await device.run(["--check"]);
    const inProcess: number[] = [];
    for (let i = 0; i < 10; i++) {
      const t = performance.now();
      await device.run(["--check"]);
      inProcess.push(performance.now() - t);
    }
    const deviceEnv = { ...process.env };
    delete deviceEnv.NODE_EXTRA_CA_CERTS;
    const asProcess: number[] = [];
    for (let i = 0; i < 10; i++) {
      const t = performance.now();
      spawnSync(process.execPath, [join(DIST, "os-update.mjs"), "--check"], {
        // A device has no NODE_EXTRA_CA_CERTS; this sandbox sets it and it costs ~45 ms per node start.
        env: { ...deviceEnv, EOS_ROOT: device.root },
      });
      asProcess.push(performance.now() - t);
    }
    const bare = [];
    for (let i = 0; i < 10; i++) {
      const t = performance.now();
      spawnSync(process.execPath, ["-e", "0"], { env: deviceEnv });
      bare.push(performance.now() - t);
    }
    console.log(
      `os-update --check, warm cache: ${median(asProcess).toFixed(0)} ms as a process (bare node start: ${median(bare).toFixed(0)} ms), ${median(inProcess).toFixed(0)} ms in-process`,
    );
  } finally {
    await device.close();
  }
} finally {
  server.kill("SIGTERM");
  await world.origin.close();
  await rm(world.dir, { recursive: true, force: true });
}
