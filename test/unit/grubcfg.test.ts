import { test } from "node:test";
import assert from "node:assert/strict";
import { earlyGrubCfg, generateGrubCfg, initialGrubenv, MAX_TRIES } from "../../src/core/image/grubcfg.ts";
import { decodeGrubenv, GRUBENV_SIZE } from "../../src/core/update/grubenv.ts";
import { EosError } from "../../src/core/errors.ts";

const slots = {
  aPart: "gpt2",
  aUuid: "0F1E2D3C-4B5A-4978-8695-A4B3C2D1E0F9",
  bPart: "gpt3",
  bUuid: "1F1E2D3C-4B5A-4978-8695-A4B3C2D1E0F9",
  cmdline: "console=ttyS0 rootfstype=squashfs",
};

test("the first grubenv has every contract variable: A committed, nothing on trial", () => {
  const block = initialGrubenv(slots);
  assert.equal(block.length, GRUBENV_SIZE);
  const vars = decodeGrubenv(block);
  assert.deepEqual(Object.fromEntries(vars), {
    eos_default: "A",
    eos_trial: "",
    eos_tries: "0",
    eos_A_part: "gpt2",
    eos_A_uuid: slots.aUuid.toLowerCase(),
    eos_B_part: "gpt3",
    eos_B_uuid: slots.bUuid.toLowerCase(),
    eos_B_version: "",
    eos_B_sha256: "",
    eos_B_size: "",
    eos_B_verity: "",
    eos_cmdline: "console=ttyS0 rootfstype=squashfs",
  });
});

test("the first grubenv records slot A's dm-verity parameter and refuses one GRUB would pass on mangled", () => {
  const sha256 = "ab".repeat(32);
  const verity = `${"cd".repeat(32)}:44032`;
  const vars = decodeGrubenv(
    initialGrubenv({ ...slots, aRecord: { version: "1", sha256, size: 1, verity } }),
  );
  assert.equal(vars.get("eos_A_verity"), verity);
  for (const bad of [
    "cd:1",
    `${"cd".repeat(32)}:`,
    `${"cd".repeat(32)}:1 init=/bin/sh`,
    `${"CD".repeat(32)}:1`,
  ])
    assert.throws(
      () => initialGrubenv({ ...slots, aRecord: { version: "1", sha256, size: 1, verity: bad } }),
      /verity parameter/,
    );
});

test("the first grubenv records what slot A holds and leaves B's record empty", () => {
  const sha256 = "ab".repeat(32);
  const vars = decodeGrubenv(
    initialGrubenv({ ...slots, aRecord: { version: "1.2.0", sha256, size: 314572800 } }),
  );
  assert.equal(vars.get("eos_A_version"), "1.2.0");
  assert.equal(vars.get("eos_A_sha256"), sha256);
  assert.equal(vars.get("eos_A_size"), "314572800");
  assert.equal(vars.get("eos_B_version"), "");
  assert.equal(vars.get("eos_B_sha256"), "");
  assert.equal(vars.get("eos_B_size"), "");
  assert.throws(
    () => initialGrubenv({ ...slots, aRecord: { version: "1", sha256: "x", size: 1 } }),
    /sha256/,
  );
});

test("the Static profile's grubenv has no slot B", () => {
  const vars = decodeGrubenv(initialGrubenv({ ...slots, bPart: undefined, bUuid: undefined }));
  assert.equal(vars.has("eos_B_part"), false);
  assert.equal(vars.has("eos_B_uuid"), false);
});

test("grubenv refuses what GRUB would misread", () => {
  assert.throws(() => initialGrubenv({ ...slots, aPart: "hd0,gpt2" }), EosError);
  assert.throws(() => initialGrubenv({ ...slots, aUuid: "not-a-guid" }), EosError);
  assert.throws(() => initialGrubenv({ ...slots, bUuid: undefined }), /both/);
  assert.throws(() => initialGrubenv({ ...slots, cmdline: "init=/bin/sh; reboot" }), /command line/);
});

test("grub.cfg loads the environment block from $prefix and saves back to it", () => {
  const cfg = generateGrubCfg();
  assert.match(cfg, /^set eos_env=\$\{prefix\}\/grubenv$/m);
  assert.match(cfg, /^load_env -f "\$\{eos_env\}"$/m);
  assert.ok(!/save_env(?! -f "\$\{eos_env\}")/.test(cfg), "every save_env names the ESP's grubenv");
});

test("grub.cfg decrements tries 9..1 through a table (GRUB has no arithmetic)", () => {
  const cfg = generateGrubCfg();
  for (let n = MAX_TRIES; n >= 1; n--) {
    const re = new RegExp(`\\[ "\\$\\{eos_tries\\}" = "${n}" \\]; then\\n\\s+set eos_tries=${n - 1}\\n`);
    assert.match(cfg, re, `tries ${n} -> ${n - 1}`);
  }
  // The decremented count is saved before the trial slot boots.
  const save = cfg.indexOf('save_env -f "${eos_env}" eos_tries\n');
  const boot = cfg.indexOf("set eos_boot=${eos_trial}");
  assert.ok(save > 0 && boot > save);
});

test("grub.cfg: no tries left clears the trial and boots the committed slot", () => {
  const cfg = generateGrubCfg();
  assert.match(
    cfg,
    /if \[ "\$\{eos_tries\}" = "0" -o -z "\$\{eos_tries\}" \]; then\n\s+set eos_trial=\n\s+set eos_tries=0\n\s+save_env -f "\$\{eos_env\}" eos_trial eos_tries/,
  );
});

test("grub.cfg passes root=PARTUUID, eos.slot, panic=10, eos.verity, eos_cmdline and COMMIT_UPDATE on trial", () => {
  const cfg = generateGrubCfg();
  assert.ok(
    cfg.includes(
      "linux (${eos_disk},${eos_part})/boot/vmlinuz root=PARTUUID=${eos_uuid} eos.slot=${eos_boot} panic=10 ${eos_vargs} ${eos_cmdline} ${eos_commit}",
    ),
  );
  assert.ok(cfg.includes('if [ -n "${eos_verity}" ]; then set eos_vargs="eos.verity=${eos_verity}"; fi'));
  assert.match(cfg, /^export eos_vargs eos_dvargs eos_A_vargs eos_B_vargs$/m);
  assert.ok(cfg.includes("initrd (${eos_disk},${eos_part})/boot/initrd.img"));
  assert.match(cfg, /set eos_commit=COMMIT_UPDATE/);
  // The fallback entry boots the committed slot without COMMIT_UPDATE.
  assert.match(cfg, /set fallback=1/);
  assert.ok(cfg.includes("eos.slot=${eos_default} panic=10 ${eos_dvargs} ${eos_cmdline}\n"));
  // Menu entries see only exported variables.
  assert.match(cfg, /^export eos_boot eos_part eos_uuid eos_commit/m);
});

test("grub.cfg treats a trial of B on a disk without B, or a garbage trial, as no tries left", () => {
  const cfg = generateGrubCfg();
  assert.match(cfg, /elif \[ "\$\{eos_trial\}" = "B" -a -z "\$\{eos_B_part\}" \]; then\n\s+set eos_tries=0/);
  assert.match(
    cfg,
    /if \[ "\$\{eos_trial\}" != "A" -a "\$\{eos_trial\}" != "B" \]; then\n\s+set eos_tries=0/,
  );
});

test("grub.cfg addresses slots on the disk GRUB was loaded from", () => {
  const cfg = generateGrubCfg();
  assert.ok(cfg.includes('regexp --set=1:eos_disk "^([^,]+)," "${root}"'));
  assert.ok(!/\(\$\{eos_(d?part|[AB]_part)\}\)/.test(cfg), "no partition without its disk");
});

test("the embedded early config loads grub.cfg from the directory GRUB was loaded from", () => {
  assert.equal(earlyGrubCfg(), 'set prefix=$cmdpath\nconfigfile "${prefix}/grub.cfg"\n');
  // Debian's GRUB 2.12 (trixie, arm64) sets only $fw_path; an empty prefix booted nothing.
  const both = earlyGrubCfg({ fwPath: true }).split("\n");
  assert.deepEqual(both.slice(0, 5), [
    'if [ -n "${cmdpath}" ]; then',
    '  set prefix="${cmdpath}"',
    'elif [ -n "${fw_path}" ]; then',
    '  set prefix="${fw_path}"',
    "fi",
  ]);
  assert.equal(both.at(-2), 'configfile "${prefix}/grub.cfg"');
});

test("grub.cfg rejects a timeout GRUB would not accept", () => {
  assert.throws(() => generateGrubCfg({ timeout: -1 }), EosError);
  assert.match(generateGrubCfg({ timeout: 0 }), /^set timeout=0$/m);
});
