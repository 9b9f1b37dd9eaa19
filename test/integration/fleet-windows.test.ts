/**
 * Maintenance windows per device group, on SQLite and on a real PostgreSQL:
 * the server's config gives the tagged group a window that is closed now
 * and every other device one that is open; the server sends each device its
 * group's window with the manifest. A real os-update run (offline
 * --root-device, as in os-update.test.ts) in the closed window downloads
 * and verifies the new root, stages it but does not put it on trial, and exits 4; in
 * the open window it applies as always. `os-update-server windows list|set|clear`
 * changes them per group through the admin API, and the devices get the change.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { runEos } from "../helpers/run.ts";
import type { RunningServer } from "../helpers/serve.ts";
import {
  closedWindow,
  makeFleetWorld,
  startFleetServer,
  stopServer,
  type FleetWorld,
} from "../helpers/fleet-server.ts";
import { makeDevice, type TestDevice } from "../helpers/device.ts";

const NAME = "EOS.x86_64-AB";

let fw: FleetWorld;

before(async () => {
  fw = await makeFleetWorld(NAME, 1024 * 1024);
});

after(async () => {
  await fw.close();
});

for (const kind of ["sqlite", "postgres"] as const) {
  describe(`maintenance windows on ${kind}`, () => {
    let server: RunningServer;
    let env: NodeJS.ProcessEnv;
    const devices = new Map<string, TestDevice>();
    const closed = closedWindow();

    before(async () => {
      if (kind === "postgres" && !fw.pg) return;
      const database = kind === "postgres" && fw.pg ? `database: ${await fw.pg.freshDatabase()}\n` : "";
      const windows =
        `serve:\n  windows:\n    - tags: [night]\n      window: "${closed}"\n` +
        `    - window: "Mon-Sun 00:00-24:00"\n`;
      const fleet = await startFleetServer({
        world: fw.world,
        dir: join(fw.world.dir, kind),
        extraConfig: `${database}${windows}`,
        deviceIds: ["night-1", "day-1", "any-1"],
        tls: fw.tls,
      });
      ({ env, server } = fleet);
      for (const id of ["night-1", "day-1", "any-1"])
        devices.set(
          id,
          await makeDevice(fw.deviceImage, fw.v1, {
            config: `update:\n  name: ${NAME}\n  url: ${server.url}\n  ca: ${fw.tls.cert}\n  tries: 3\n`,
            keys: [join(fw.world.keysDir, "release.pub")],
            token: fleet.tokens.get(id) as string,
          }),
        );
    });

    after(async () => {
      if (server) await stopServer(server);
      for (const d of devices.values()) await d.close();
    });

    const cli = (args: string[]) =>
      runEos("os-update-server", [...args, "--ca", fw.tls.cert], { env: { ...env } });

    test("a device in a closed window downloads and verifies, does not switch, exits 4; --check shows it", async (t) => {
      if (!server) return t.skip(`PostgreSQL cannot start here: ${fw.pgUnavailable}`);
      const night = devices.get("night-1") as TestDevice;
      // First contact registers the device; then it joins the group.
      assert.equal((await night.run(["--check"])).code, 1);
      const tagged = await cli(["devices", "tag", "night-1", "night"]);
      assert.equal(tagged.code, 0, tagged.stderr);

      const checked = await night.run(["--check", "--json"]);
      assert.equal(checked.code, 1, "an update is available, whatever the window");
      const window = JSON.parse(checked.stdout).window as Record<string, unknown>;
      assert.deepEqual([window.spec, window.timezone, window.open], [closed, "UTC", false]);
      assert.ok(Date.parse(String(window.opens)) > Date.now(), String(window.opens));
      assert.match(
        (await night.run(["--check"])).stdout,
        /maintenance window: .* \(UTC\), closed; opens at /,
      );

      const applied = await night.run(["--apply"]);
      assert.equal(applied.code, 4, applied.stderr);
      assert.match(
        applied.stderr,
        /\[WINDOW\]: 2\.0\.0 is written and verified in slot B, but this device's maintenance window \(.*, UTC\) is closed: not switching to it; it opens at /,
      );
      const vars = await night.grubenv();
      assert.deepEqual([vars.get("eos_trial"), vars.get("eos_default")], ["", "A"], "no trial, no switch");
      assert.deepEqual(night.calls, [], "no kexec, no reboot");
      const shown = JSON.parse((await cli(["devices", "show", "night-1", "--json"])).stdout.toString()) as {
        events: Array<{ type: string }>;
      };
      const types = shown.events.map((e) => e.type);
      assert.ok(types.includes("download_started"), types.join(" "));
      assert.ok(!types.includes("failed") && !types.includes("written"), `not a failure: ${types.join(" ")}`);
    });

    test("a device whose group's window is open applies as always", async (t) => {
      if (!server) return t.skip(`PostgreSQL cannot start here: ${fw.pgUnavailable}`);
      const day = devices.get("day-1") as TestDevice;
      const checked = await day.run(["--check", "--json"]);
      assert.equal(checked.code, 1);
      assert.deepEqual(JSON.parse(checked.stdout).window, {
        spec: "Mon-Sun 00:00-24:00",
        timezone: "UTC",
        open: true,
        opens: null,
      });
      const applied = await day.run(["--apply"]);
      assert.equal(applied.code, 0, applied.stderr);
      assert.equal((await day.grubenv()).get("eos_trial"), "B");
    });

    test("os-update-server windows list|set|clear changes one group's window, and its devices get it", async (t) => {
      if (!server) return t.skip(`PostgreSQL cannot start here: ${fw.pgUnavailable}`);
      const night = devices.get("night-1") as TestDevice;
      const untagged = devices.get("any-1") as TestDevice;
      const windowOf = async (d: TestDevice) =>
        (JSON.parse((await d.run(["--check", "--json"])).stdout).window as { spec: string } | null)?.spec ??
        null;
      const ok = async (args: string[]) => {
        const r = await cli(["windows", ...args]);
        assert.equal(r.code, 0, `windows ${args.join(" ")}: ${r.stderr}`);
        return r.stdout.toString();
      };
      const refused = async (args: string[], env: NodeJS.ProcessEnv = {}) => {
        const r = await runEos("os-update-server", ["windows", ...args, "--ca", fw.tls.cert], {
          env: { ...process.env, EOS_SERVER_URL: server.url, ...env },
        });
        assert.notEqual(r.code, 0, `windows ${args.join(" ")} must fail`);
        return r.stderr;
      };
      const config = [
        { tags: ["night"], window: closed },
        { tags: [], window: "Mon-Sun 00:00-24:00" },
      ];
      assert.deepEqual(JSON.parse(await ok(["list", "--json"])), { windows: config, source: "config" });
      const listed = await ok(["list"]);
      assert.match(listed, new RegExp(`^night +${closed}$`, "m"));
      assert.match(listed, /^\(every device\) +Mon-Sun 00:00-24:00$/m);
      assert.match(listed, /from the server's config/);
      assert.equal(await windowOf(untagged), "Mon-Sun 00:00-24:00");

      // Bad arguments are refused naming the argument; a viewer may look but not change.
      assert.match(
        await refused(["set", "Mon 25:00-26:00", "--tag", "night"], { EOS_ADMIN_TOKEN: env.EOS_ADMIN_TOKEN }),
        /\[USAGE\]: <window>: window "Mon 25:00-26:00": "25:00" is not a time/,
      );
      assert.match(
        await refused(["set", "01:00-02:00", "--tag", "a b"], { EOS_ADMIN_TOKEN: env.EOS_ADMIN_TOKEN }),
        /\[USAGE\]: --tag: not a tag: "a b"/,
      );
      assert.match(await refused(["set", "01:00-02:00"], { EOS_ADMIN_TOKEN: env.VIEWER }), /\[AUTH\]/);
      assert.match(await refused(["list"], { EOS_ADMIN_TOKEN: "" }), /\[USAGE\]: no admin token/);

      // The night group now opens all day; the default closes: each device gets its group's.
      await ok(["set", "00:00-24:00", "--tag", "night"]);
      const set = JSON.parse(await ok(["set", closed, "--json"])) as { windows: unknown; source: string };
      assert.deepEqual(set.windows, [
        { tags: ["night"], window: "00:00-24:00" },
        { tags: [], window: closed },
      ]);
      assert.equal(set.source, "api");
      assert.equal(await windowOf(night), "00:00-24:00");
      assert.equal(await windowOf(untagged), closed);
      // A new group goes before the groups that would otherwise catch its devices: [night], the default.
      await ok(["set", "Sat,Sun 00:00-24:00", "--tag", "lab", "night"]);
      const shown = JSON.parse(await ok(["list", "--json"])) as {
        windows: Array<{ tags: string[] }>;
        updated_by: string;
      };
      assert.deepEqual(
        shown.windows.map((g) => g.tags),
        [["lab", "night"], ["night"], []],
      );
      assert.equal(shown.updated_by, "ops");

      // Cleared, the night group's devices fall to the default; a group without a window is an error.
      await ok(["clear", "--tag", "night"]);
      assert.equal(await windowOf(night), closed);
      assert.match(
        await refused(["clear", "--tag", "nosuch"], { EOS_ADMIN_TOKEN: env.EOS_ADMIN_TOKEN }),
        /\[NOT_FOUND\]: devices tagged nosuch: no maintenance window/,
      );
      await ok(["clear"]);
      assert.equal(await windowOf(untagged), null, "no group left for an untagged device: any time");
      assert.match(await ok(["list"]), /other devices: any time/);

      // --all drops what the API set: the config's groups are in force again.
      const back = JSON.parse(await ok(["clear", "--all", "--json"])) as { windows: unknown; source: string };
      assert.deepEqual([back.windows, back.source], [config, "config"]);
      assert.equal(await windowOf(night), closed);
    });
  });
}
