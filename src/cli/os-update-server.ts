/**
 * `os-update-server`: fetch (the original os-fetch + os-update-daemon),
 * serve (HTTP/HTTPS), restricted (SSH forced command), token (device tokens).
 */
import { sysPath, type Context } from "../io/context.ts";
import { fetchAll } from "../io/server/fetch-all.ts";
import { syncFetchTimers } from "../io/server/fetch-timers.ts";
import { DEFAULT_IMAGES_DIR } from "../io/server/published.ts";
import { answerRestricted } from "../io/server/restricted.ts";
import { serve, type ServeOptions } from "../io/server/serve.ts";
import { DEFAULT_TOKENS_DIR } from "../io/server/server-config.ts";
import { TokenStore } from "../io/server/tokens.ts";
import { EosError } from "../core/errors.ts";
import { ADMIN_NAME, isRole, ROLES } from "../core/fleet/admin.ts";
import { formatDevice, formatDeviceList, type DeviceRow, type EventRow } from "../core/fleet/format.ts";
import { adminClient, type AdminClient } from "../io/server/fleet/admin-client.ts";
import { withFleetStore } from "../io/server/fleet/open.ts";
import type { FleetStore } from "../io/server/fleet/store.ts";
import { newProgram, parseProgram } from "./main.ts";
import type { Command } from "commander";
import { formatRollout, formatRolloutList, formatWindows, type WindowsRow } from "../core/fleet/format.ts";
import { windowsClient } from "../io/server/fleet/windows-client.ts";
import { parseShare, parseWaves, ROLLOUT_DEFAULTS, soakSeconds } from "../core/fleet/rollout.ts";
import type { Rollout, WaveCount } from "../core/fleet/rollout.ts";

interface ApiOpts {
  server?: string;
  tokenFile?: string;
  ca?: string;
  json?: boolean;
}

interface CreateOpts extends ApiOpts {
  waves: string;
  previous?: string;
  tag?: string[];
  soak: string;
  errorThreshold: string;
  successThreshold: string;
  id?: string;
}

interface FetchOpts {
  config?: string;
  imagesDir?: string;
  image?: string[];
  daemon?: boolean;
  timers?: boolean;
  json?: boolean;
}

export async function osUpdateServerMain(argv: string[], ctx: Context): Promise<number> {
  const program = newProgram("os-update-server", ctx).description(
    "EOS update server: fetches images from their origin, publishes and serves them",
  );
  let result = 0;
  program
    .command("fetch")
    .description(
      "fetch the images in /etc/os-update.yml from their origin and publish them (exit 1 if any failed)",
    )
    .option("--config <file>", "configuration (default /etc/os-update-server.yml, else /etc/os-update.yml)")
    .option("--images-dir <dir>", `published image directory (default ${DEFAULT_IMAGES_DIR})`)
    .option("--image <name...>", "only these images: name, path (/srv/www/fleet/os-images/NAME.raw) or URL")
    .option("--daemon", "keep running, fetching each image at its interval (default 1h)")
    .option("--oneshot", "fetch once and exit (the default; the original daemon's flag)")
    .option(
      "--timers",
      "then enable and start os-update-daemon@NAME.timer per configured image, stop those of removed images (os-fetch.service)",
    )
    .option("--json", "print results as JSON")
    .action(async (opts: FetchOpts) => {
      const results = await fetchAll(ctx, { ...opts, images: opts.image, emptyOk: opts.timers });
      if (opts.daemon) return;
      let timersFailed = false;
      if (opts.timers) {
        const sync = await syncFetchTimers(ctx, opts.config);
        for (const unit of sync.enabled) ctx.stdout.write(`enabled ${unit}\n`);
        for (const unit of sync.disabled) ctx.stdout.write(`disabled ${unit}\n`);
        for (const f of sync.failed) ctx.stderr.write(`os-update-server: ${f.unit}: ${f.error}\n`);
        timersFailed = sync.failed.length > 0;
      }
      if (opts.json) ctx.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
      else {
        for (const r of results) {
          const detail =
            r.status === "failed" || r.status === "skipped"
              ? `: ${r.error}`
              : r.version
                ? ` ${r.version}`
                : "";
          ctx.stdout.write(`${r.name}: ${r.status}${detail}\n`);
        }
      }
      result = timersFailed || results.some((r) => r.status === "failed") ? 1 : 0;
    });
  program
    .command("serve")
    .description("serve published images over HTTP(S)")
    .option("--config <file>", "configuration (default /etc/os-update-server.yml, else /etc/os-update.yml)")
    .option("--images-dir <dir>", "published image directory")
    .option("--listen <address>", "address to listen on (default 0.0.0.0)")
    .option("--port <port>", "port (default 8080, 8443 with TLS; 0 picks a free one)")
    .option("--cert <file>", "TLS certificate (PEM)")
    .option("--tls-key <file>", "TLS private key (PEM)")
    .option("--tokens-dir <dir>", `device tokens (default ${DEFAULT_TOKENS_DIR})`)
    .option("--no-auth", "serve without device tokens (trusted networks only)")
    .option(
      "--state-dir <dir>",
      "the control plane's SQLite database lives here (default /var/lib/os-update-server)",
    )
    .option("--assignment-key <file>", "ed25519 key that signs downgrade assignments (abort, pin)")
    .action(async (opts: ServeOptions) => {
      await serve(ctx, opts);
    });
  program
    .command("restricted")
    .description("SSH forced command: serve only published image streams (reads SSH_ORIGINAL_COMMAND)")
    .option("--config <file>", "configuration (default /etc/os-update-server.yml, else /etc/os-update.yml)")
    .option("--images-dir <dir>", "published image directory")
    .action(async (opts: { config?: string; imagesDir?: string }) => {
      result = await answerRestricted(ctx, opts);
    });
  const token = program.command("token").description("manage per-device bearer tokens");
  const tokensDirOption = ["--tokens-dir <dir>", `device tokens (default ${DEFAULT_TOKENS_DIR})`] as const;
  const tokenStore = (dir: string | undefined) => new TokenStore(dir ?? sysPath(ctx, DEFAULT_TOKENS_DIR));
  token
    .command("add")
    .description("create a token for a device and print it once")
    .argument("<device>")
    .option(...tokensDirOption)
    .option(
      "--enrolment",
      "the fleet's enrolment key instead (shipped in images): good only for a device to enrol and get its own token",
    )
    .action(async (device: string, opts: { tokensDir?: string; enrolment?: boolean }) => {
      ctx.stdout.write(`${await tokenStore(opts.tokensDir).add(device, opts.enrolment === true)}\n`);
    });
  token
    .command("revoke")
    .description("revoke a device's token")
    .argument("<device>")
    .option(...tokensDirOption)
    .action(async (device: string, opts: { tokensDir?: string }) => {
      await tokenStore(opts.tokensDir).revoke(device);
    });
  token
    .command("list")
    .description("list devices that have a token")
    .option(...tokensDirOption)
    .action(async (opts: { tokensDir?: string }) => {
      for (const t of await tokenStore(opts.tokensDir).list())
        ctx.stdout.write(`${t.device}${t.enrolment ? "\t(enrolment key)" : ""}\n`);
    });
  // The inventory through the admin API, as the token given is allowed to see and change it.
  const devices = program.command("devices").description("the fleet's devices (admin API)");
  const api = (c: ReturnType<typeof program.command>) =>
    c
      .option("--server <url>", "the update server (default $EOS_SERVER_URL, else http://127.0.0.1:8080)")
      .option("--token-file <file>", "admin token file (default: the token in $EOS_ADMIN_TOKEN)")
      .option("--ca <file>", "CA of a private server certificate")
      .option("--json", "print the API's JSON");
  const client = (o: ApiOpts) =>
    adminClient({ server: o.server, tokenFile: o.tokenFile, ca: o.ca, env: ctx.env });
  api(devices.command("list").description("list devices, filtered"))
    .option("--tag <tag>", "only devices with this tag")
    .option("--version <version>", "only devices running this version")
    .option("--state <state>", "only devices in this state (current, update-available, downloading, …)")
    .option("--image <name>", "only devices of this image")
    .action(async (o: ApiOpts & { tag?: string; version?: string; state?: string; image?: string }) => {
      const query = new URLSearchParams();
      for (const key of ["tag", "version", "state", "image"] as const)
        if (o[key] !== undefined) query.set(key, o[key]);
      const q = query.toString();
      const answer = (await (await client(o)).get(`/v1/admin/devices${q ? `?${q}` : ""}`)) as {
        devices: DeviceRow[];
      };
      ctx.stdout.write(o.json ? `${JSON.stringify(answer, null, 2)}\n` : formatDeviceList(answer.devices));
    });
  api(devices.command("show").description("one device and its event history").argument("<device>"))
    .option("--limit <n>", "the newest N events (default 100)")
    .action(async (id: string, o: ApiOpts & { limit?: string }) => {
      const q = o.limit === undefined ? "" : `?limit=${encodeURIComponent(o.limit)}`;
      const answer = (await (await client(o)).get(`/v1/admin/devices/${encodeURIComponent(id)}${q}`)) as {
        device: DeviceRow;
        events: EventRow[];
      };
      ctx.stdout.write(
        o.json ? `${JSON.stringify(answer, null, 2)}\n` : formatDevice(answer.device, answer.events),
      );
    });
  api(
    devices
      .command("tag")
      .description("set a device's tags (replaces them; none clears)")
      .argument("<device>"),
  )
    .argument("[tags...]")
    .action(async (id: string, tags: string[], o: ApiOpts) => {
      const answer = await (
        await client(o)
      ).send("PUT", `/v1/admin/devices/${encodeURIComponent(id)}/tags`, { tags });
      ctx.stdout.write(o.json ? `${JSON.stringify(answer)}\n` : `${id}: ${tags.join(", ") || "no tags"}\n`);
    });
  api(
    devices
      .command("revoke")
      .description("revoke an enrolled device's token: it is refused until enrolled again")
      .argument("<device>"),
  ).action(async (id: string, o: ApiOpts) => {
    const answer = await (await client(o)).send("POST", `/v1/admin/devices/${encodeURIComponent(id)}/revoke`);
    ctx.stdout.write(o.json ? `${JSON.stringify(answer)}\n` : `${id}: revoked\n`);
  });
  addRolloutCommands(program, ctx, api, client);
  addWindowCommands(program, ctx, api, client);
  // Admin tokens live in the database: made here directly, so the first one needs no other.
  const admins = program
    .command("admin-token")
    .description("admin API tokens (in the control plane's database)");
  const dbOpts = (c: ReturnType<typeof program.command>) =>
    c
      .option("--config <file>", "configuration (default /etc/os-update.yml): its database:")
      .option("--state-dir <dir>", "where the SQLite database is (default /var/lib/os-update-server)");
  const withStore = <T>(o: { config?: string; stateDir?: string }, fn: (s: FleetStore) => Promise<T>) =>
    withFleetStore(ctx, o, fn);
  dbOpts(admins.command("add").description("make an admin token and print it once").argument("<name>"))
    .requiredOption("--role <role>", `one of ${ROLES.join(", ")}`)
    .action(async (name: string, o: { role: string; config?: string; stateDir?: string }) => {
      if (!ADMIN_NAME.test(name))
        throw new EosError("USAGE", `name: letters, digits and . _ - only: ${JSON.stringify(name)}`);
      const role = o.role;
      if (!isRole(role))
        throw new EosError("USAGE", `--role: one of ${ROLES.join(", ")}, not ${JSON.stringify(role)}`);
      ctx.stdout.write(`${await withStore(o, (s) => s.addAdminToken(name, role))}\n`);
    });
  dbOpts(admins.command("revoke").description("revoke an admin token").argument("<name>")).action(
    async (name: string, o: { config?: string; stateDir?: string }) => {
      await withStore(o, (s) => s.revokeAdminToken(name));
    },
  );
  dbOpts(admins.command("list").description("list admin tokens (names and roles)")).action(
    async (o: { config?: string; stateDir?: string }) => {
      for (const t of await withStore(o, (s) => s.listAdminTokens()))
        ctx.stdout.write(`${t.name}\t${t.role}\t${t.created}\n`);
    },
  );
  const early = await parseProgram(program, argv);
  return early ?? result;
}

/** windows list|set|clear: maintenance windows per device group through the admin API. */
function addWindowCommands(
  program: Command,
  ctx: Context,
  api: (c: Command) => Command,
  client: (o: ApiOpts) => Promise<AdminClient>,
): void {
  const windows = program
    .command("windows")
    .description("maintenance windows per device group, UTC (admin API)");
  const group = (c: Command) =>
    api(c).option("--tag <tag...>", "the group: devices with all these tags (none: every device)");
  type Opts = ApiOpts & { tag?: string[]; all?: boolean };
  const print = (o: Opts, answer: WindowsRow) => {
    ctx.stdout.write(o.json ? `${JSON.stringify(answer, null, 2)}\n` : formatWindows(answer));
  };
  const call = async (o: Opts) => windowsClient(await client(o));
  api(windows.command("list").description("the groups in force (first match wins) and their source")).action(
    async (o: Opts) => print(o, await (await call(o)).list()),
  );
  group(
    windows
      .command("set")
      .description("set a group's window")
      .argument("<window>", "e.g. Mon-Fri 22:00-04:00"),
  ).action(async (spec: string, o: Opts) => print(o, await (await call(o)).set(o.tag ?? [], spec)));
  group(windows.command("clear").description("remove a group's window: its devices get the next match's"))
    .option("--all", "drop every window set through the API: the config's serve.windows apply again")
    .action(async (o: Opts) => {
      if (o.all && o.tag) throw new EosError("USAGE", "--all: clears every group, give it without --tag");
      const w = await call(o);
      print(o, await (o.all ? w.clearAll() : w.clear(o.tag ?? [])));
    });
}

/** rollout create|list|show|pause|resume|abort|pin|unpin: rollouts and pins through the admin API. */
function addRolloutCommands(
  program: Command,
  ctx: Context,
  api: (c: Command) => Command,
  client: (o: ApiOpts) => Promise<AdminClient>,
): void {
  const rollout = program.command("rollout").description("staged rollouts and device pins (admin API)");
  const print = (o: ApiOpts, answer: unknown, text: string) =>
    ctx.stdout.write(o.json ? `${JSON.stringify(answer, null, 2)}\n` : text);
  const id = (text: string) => encodeURIComponent(text);

  api(
    rollout
      .command("create")
      .description("roll a published version out in waves")
      .argument("<image>")
      .argument("<version>"),
  )
    .requiredOption("--waves <list>", "shares and canary tags, e.g. 1%,10%,50%,100% or tag:canary,100%")
    .option(
      "--previous <version>",
      "what devices keep until their wave, and get back on abort (default: the newest older published)",
    )
    .option("--tag <tag...>", "only devices with all these tags")
    .option("--soak <duration>", "how long each wave runs before the next opens", ROLLOUT_DEFAULTS.soak)
    .option(
      "--error-threshold <share>",
      "pause when failed + fell back + rolled back exceed this share of a wave",
      ROLLOUT_DEFAULTS.errorThreshold,
    )
    .option(
      "--success-threshold <share>",
      "open the next wave once this share of the wave runs the version",
      ROLLOUT_DEFAULTS.successThreshold,
    )
    .option("--id <name>", "the rollout's name (default: generated)")
    .action(async (image: string, version: string, o: CreateOpts) => {
      parseWaves(o.waves, "--waves");
      const body = {
        image,
        version,
        ...(o.previous === undefined ? {} : { previous: o.previous }),
        ...(o.id === undefined ? {} : { id: o.id }),
        tags: o.tag ?? [],
        waves: o.waves,
        soak_seconds: soakSeconds(o.soak),
        error_threshold: parseShare(o.errorThreshold, "--error-threshold"),
        success_threshold: parseShare(o.successThreshold, "--success-threshold"),
      };
      const answer = (await (await client(o)).send("POST", "/v1/admin/rollouts", body)) as {
        rollout: Rollout;
      };
      print(
        o,
        answer,
        `rollout ${answer.rollout.id}: ${image} ${version} over ${answer.rollout.previous}, wave 1 open\n`,
      );
    });
  api(rollout.command("list").description("rollouts, newest first"))
    .option("--image <name>", "only rollouts of this image")
    .action(async (o: ApiOpts & { image?: string }) => {
      const q = o.image === undefined ? "" : `?image=${encodeURIComponent(o.image)}`;
      const answer = (await (await client(o)).get(`/v1/admin/rollouts${q}`)) as { rollouts: Rollout[] };
      print(o, answer, formatRolloutList(answer.rollouts));
    });
  api(rollout.command("show").description("one rollout and its current wave").argument("<rollout>")).action(
    async (name: string, o: ApiOpts) => {
      const answer = (await (await client(o)).get(`/v1/admin/rollouts/${id(name)}`)) as {
        rollout: Rollout;
        wave: WaveCount;
      };
      print(o, answer, formatRollout(answer.rollout, answer.wave));
    },
  );
  for (const [action, what] of [
    ["pause", "stop opening waves (devices already released keep the version)"],
    ["resume", "carry on from the current wave (its soak starts again)"],
    ["abort", "assign the previous version back to every covered device (a signed downgrade)"],
  ] as const) {
    api(rollout.command(action).description(what).argument("<rollout>"))
      .option("--reason <text>", "why, shown with the rollout")
      .action(async (name: string, o: ApiOpts & { reason?: string }) => {
        const answer = (await (
          await client(o)
        ).send(
          "POST",
          `/v1/admin/rollouts/${id(name)}/${action}`,
          o.reason === undefined ? {} : { reason: o.reason },
        )) as { rollout: Rollout };
        print(o, answer, `rollout ${name}: ${answer.rollout.state}\n`);
      });
  }
  api(
    rollout
      .command("pin")
      .description(
        "serve this device this version, whatever rollouts say (an older one is a signed downgrade)",
      )
      .argument("<device>")
      .argument("<version>"),
  ).action(async (device: string, version: string, o: ApiOpts) => {
    const answer = await (await client(o)).send("PUT", `/v1/admin/devices/${id(device)}/pin`, { version });
    print(o, answer, `${device}: pinned to ${version}\n`);
  });
  api(
    rollout
      .command("unpin")
      .description("let rollouts decide this device's version again")
      .argument("<device>"),
  ).action(async (device: string, o: ApiOpts) => {
    const answer = await (await client(o)).send("DELETE", `/v1/admin/devices/${id(device)}/pin`);
    print(o, answer, `${device}: not pinned\n`);
  });
}
