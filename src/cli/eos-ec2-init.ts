/**
 * `eos-ec2-init`: the EC2 profile's boot-time set-up (eos-ec2-init.service,
 * before sshd): the instance's SSH keys and host name from the metadata
 * service over IMDSv2. Without a metadata service (the same image booted
 * in KVM or on a board) it says so and exits 0: that is not a failure of
 * the boot.
 */
import { IMDS_DEFAULT_URL, parseImdsUrl } from "../core/cloud/imds.ts";
import { ec2Init } from "../io/cloud/ec2-init.ts";
import type { Context } from "../io/context.ts";
import { newProgram, parseProgram, usageError } from "./main.ts";

function seconds(value: string, what: string, max: number): number {
  const n = Number(value);
  if (!/^\d+(\.\d+)?$/.test(value) || n <= 0 || n > max)
    throw usageError(`${what} ${value}: must be a number of seconds, more than 0 and at most ${max}`);
  return Math.round(n * 1000);
}

export async function eosEc2InitMain(argv: string[], ctx: Context): Promise<number> {
  const program = newProgram("eos-ec2-init", ctx)
    .description("SSH keys and host name of this EC2 instance from its metadata service (IMDSv2)")
    .option("--url <url>", `metadata service (default: EOS_IMDS_URL or ${IMDS_DEFAULT_URL})`)
    .option("--user <name>", "login user whose authorized_keys get the instance's keys", "root")
    .option("--timeout <seconds>", "each request's timeout", "2")
    .option("--wait <seconds>", "how long to wait for the service to answer at all", "20")
    .option("--json", "print the result as JSON");
  let opts: { url?: string; user: string; timeout: string; wait: string; json?: boolean } = {
    user: "root",
    timeout: "2",
    wait: "20",
  };
  program.action((o: typeof opts) => {
    opts = o;
  });
  const early = await parseProgram(program, argv);
  if (early !== undefined) return early;
  if (!/^[a-z_][a-z0-9_-]{0,31}$/.test(opts.user)) throw usageError(`--user ${opts.user}: not a user name`);
  const baseUrl = opts.url
    ? parseImdsUrl(opts.url, "--url")
    : ctx.env.EOS_IMDS_URL
      ? parseImdsUrl(ctx.env.EOS_IMDS_URL, "EOS_IMDS_URL")
      : IMDS_DEFAULT_URL;
  const say = (line: string) => ctx.stdout.write(`eos-ec2-init: ${line}\n`);
  const r = await ec2Init(ctx, {
    user: opts.user,
    imds: {
      baseUrl,
      requestTimeoutMs: seconds(opts.timeout, "--timeout", 60),
      waitMs: seconds(opts.wait, "--wait", 600),
      signal: ctx.signal,
      log: say,
    },
    // The kernel's host name only for the system itself, never under a test's EOS_ROOT.
    ...(ctx.root === "/"
      ? {
          setHostname: async (name: string) => {
            await ctx.proc.run(["hostname", name], { what: "hostname" });
          },
        }
      : {}),
  });
  if (opts.json) {
    ctx.stdout.write(`${JSON.stringify(r)}\n`);
  } else if (r.metadata === "unavailable") {
    say(
      `${r.reason}: not on EC2, or its metadata service is off; SSH keys and host name stay as the image has them`,
    );
  } else {
    if (r.noKeys) say(`${r.noKeys}; authorized_keys keeps only the image's keys`);
    if (r.authorizedKeys)
      say(
        `${r.keys.length} SSH key(s) from IMDS (${r.keys.map((k) => k.name || `#${k.index}`).join(", ") || "none"}) for ${opts.user} in ${r.authorizedKeys}`,
      );
    if (r.hostname)
      say(
        `host name ${r.hostname.short} (${r.hostname.fqdn}) in /etc/hostname and /etc/hosts${r.hostname.kernel ? ", and set" : ""}`,
      );
    if (r.noHostname) say(`${r.noHostname}; the host name stays the image's`);
  }
  for (const k of r.metadata === "read" ? r.refused : [])
    ctx.stderr.write(`eos-ec2-init: refused key ${k.index}: ${k.reason}\n`);
  return r.metadata === "read" && r.refused.length > 0 ? 3 : 0;
}
