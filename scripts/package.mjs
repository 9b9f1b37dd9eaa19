// `npm run package [-- --out DIR]`: a Debian package of EOS's commands for a
// host that is not an EOS image (a build host, an update server):
//   /usr/lib/eos/dist/        the bundles (dist/*.mjs and dist/chunks/)
//   /usr/bin/NAME             a link to /usr/lib/eos/dist/NAME.mjs per command
//   /usr/lib/systemd/system/  the units in systemd/ (none enabled by the package)
// Node comes from Debian (Depends: nodejs); built with dpkg-deb, root-owned.
import { execFileSync } from "node:child_process";
import {
  chmodSync,
  cpSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join, resolve } from "node:path";

const repo = resolve(import.meta.dirname, "..");
const args = process.argv.slice(2);
const outAt = args.indexOf("--out");
const out = resolve(outAt >= 0 && args[outAt + 1] ? args[outAt + 1] : join(repo, ".tmp", "package"));
const pkg = JSON.parse(readFileSync(join(repo, "package.json"), "utf8"));

execFileSync(process.execPath, [join(repo, "scripts", "bundle.mjs")], { cwd: repo, stdio: "inherit" });

const stage = join(out, "stage");
rmSync(stage, { recursive: true, force: true });
const lib = join(stage, "usr", "lib", "eos");
mkdirSync(lib, { recursive: true });
cpSync(join(repo, "dist"), join(lib, "dist"), { recursive: true });
mkdirSync(join(stage, "usr", "bin"), { recursive: true });
for (const [name, target] of Object.entries(pkg.bin)) {
  symlinkSync(`../lib/eos/${target}`, join(stage, "usr", "bin", name));
}
const units = join(stage, "usr", "lib", "systemd", "system");
mkdirSync(units, { recursive: true });
for (const unit of readdirSync(join(repo, "systemd"))) cpSync(join(repo, "systemd", unit), join(units, unit));
const doc = join(stage, "usr", "share", "doc", "eos");
mkdirSync(doc, { recursive: true });
cpSync(join(repo, "README.md"), join(doc, "README.md"));
writeFileSync(
  join(doc, "copyright"),
  "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n" +
    "Upstream-Name: eos\nSource: https://github.com/OSInside/eos\n\nFiles: *\nLicense: GPL-3.0-or-later\n",
);

const debian = join(stage, "DEBIAN");
mkdirSync(debian);
const sizeKiB = Number(
  execFileSync("du", ["-sk", "--exclude=DEBIAN", stage], { encoding: "utf8" }).split("\t")[0],
);
const control = [
  `Package: eos`,
  `Version: ${pkg.version}`,
  `Architecture: all`,
  `Maintainer: EOS developers <eos@localhost>`,
  `Installed-Size: ${sizeKiB}`,
  `Depends: nodejs (>= 18.19), libjemalloc2`,
  `Recommends: openssh-client, xz-utils, zstd`,
  `Suggests: podman, qemu-system-x86, gdisk, squashfs-tools, erofs-utils, mtools, dosfstools, cryptsetup-bin, kexec-tools`,
  `Section: admin`,
  `Priority: optional`,
  `Homepage: https://github.com/OSInside/eos`,
  `Description: ${pkg.description}`,
  ` The commands of EOS on a host that is not an EOS image: eos (build, run,`,
  ` demo), os-update-server (fetch, serve, restricted), os-update, flake-ctl,`,
  ` podman-pilot, firecracker-pilot, flake-registry, fleet and eos-ec2-init,`,
  ` with their`,
  ` systemd units (not enabled).`,
  ``,
].join("\n");
writeFileSync(join(debian, "control"), control);
for (const dir of [debian]) chmodSync(dir, 0o755);

const deb = join(out, `eos_${pkg.version}_all.deb`);
execFileSync("dpkg-deb", ["--root-owner-group", "-Zxz", "--build", stage, deb], {
  stdio: ["ignore", "ignore", "inherit"],
});
rmSync(stage, { recursive: true, force: true });
process.stdout.write(`${deb}\n`);
