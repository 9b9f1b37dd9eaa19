/**
 * The update-server demo (until `eos demo` boots real images): builds two
 * small signed sample images, publishes them from a loopback origin with
 * `os-update-server fetch`, serves them with `os-update-server serve` and
 * downloads the root stream as a device would, verifying it.
 */
import { startServer } from "../test/helpers/serve.ts";
import { createHash } from "node:crypto";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { runEos, run } from "../test/helpers/run.ts";
import { makeWorld, releaseImage, writeServerConfig } from "../test/helpers/server-world.ts";

const started = performance.now();
const step = (text: string) =>
  console.log(`[${((performance.now() - started) / 1000).toFixed(1).padStart(5)} s] ${text}`);

const world = await makeWorld();
const name = "EOS.x86_64-AB";
const server = { kill: (_s: string) => false } as { kill(s: string): boolean };
try {
  step(`release keys in ${world.keysDir}; origin at ${world.origin.url}`);
  await writeServerConfig(world, [
    { image: `${world.origin.url}/${name}.raw.xz`, name: `${name}.raw`, interval: "1h" },
  ]);
  await releaseImage(world, name, "1.0.0");
  step("v1.0.0 built, signed (eos manifest) and put on the origin as .raw.xz");
  const f1 = await runEos("os-update-server", ["fetch", "--config", world.config]);
  step(`os-update-server fetch → ${f1.stdout.toString().trim()}`);
  world.origin.requests.length = 0;
  const f2 = await runEos("os-update-server", ["fetch", "--config", world.config]);
  step(
    `fetch again → ${f2.stdout.toString().trim()} (origin saw ${world.origin.requests.length} request: ${world.origin.requests.join(", ")})`,
  );
  const token = (
    await runEos("os-update-server", [
      "token",
      "add",
      "demo-device",
      "--tokens-dir",
      join(world.dir, "tokens"),
    ])
  ).stdout
    .toString()
    .trim();
  step("token created for device demo-device");
  const { child, url } = await startServer({ config: world.config, tokensDir: join(world.dir, "tokens") });
  Object.assign(server, { kill: (s: string) => child.kill(s as NodeJS.Signals) });
  step(`os-update-server serve listening on ${url}`);
  const auth = ["-H", `Authorization: Bearer ${token}`];
  const manifest = JSON.parse(
    (await run("curl", ["-sf", ...auth, `${url}/v1/images/${name}/manifest.json`])).stdout.toString(),
  ) as {
    version: string;
    partitions: { root: { sha256: string; size: number } };
  };
  const root = (await run("curl", ["-sf", ...auth, `${url}/v1/images/${name}/root`])).stdout;
  const sha = createHash("sha256").update(root).digest("hex");
  step(
    `device downloads root v${manifest.version}: ${root.length} bytes, sha256 ${sha === manifest.partitions.root.sha256 ? "matches" : "DOES NOT MATCH"} the signed manifest`,
  );
  const denied = await run("curl", [
    "-s",
    "-o",
    "/dev/null",
    "-w",
    "%{http_code}",
    `${url}/v1/images/${name}/root`,
  ]);
  step(`without a token: HTTP ${denied.stdout.toString()}`);
  await releaseImage(world, name, "2.0.0");
  const f3 = await runEos("os-update-server", ["fetch", "--config", world.config]);
  step(`v2.0.0 released; fetch → ${f3.stdout.toString().trim()}`);
  const head = await run("curl", ["-sfI", ...auth, `${url}/v1/images/${name}/root`]);
  step(`server now offers ${/x-eos-version: (\S+)/i.exec(head.stdout.toString())?.[1] ?? "?"}`);
  step("done: the full VM demo (build, boot, update, rollback) is `eos demo` once images can be built");
} finally {
  server.kill("SIGTERM");
  await world.origin.close();
  await rm(world.dir, { recursive: true, force: true });
}
