#!/usr/bin/env bash
# Installs what EOS's tools, tests and demo need on a Debian 12 machine:
# Debian packages (only the missing ones) and the npm dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  gdisk dosfstools mtools squashfs-tools erofs-utils e2fsprogs xfsprogs fdisk xz-utils zstd xdelta3
  openssh-server openssh-client
  podman runc uidmap slirp4netns fuse-overlayfs catatonit
  qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools tpm2-tools cryptsetup-bin
  mmdebstrap kexec-tools grub-efi-amd64-bin busybox-static gcc libc6-dev iproute2
  # eos build --arch aarch64 (arm64 maintainer scripts under qemu-user) and eos run of its image
  qemu-user-static binfmt-support arch-test qemu-system-arm qemu-efi-aarch64
  curl libjemalloc2
  # bench/delta.ts: casync's new chunks are the chunk path's baseline
  casync
  postgresql
  # the browser tests of the dashboard (playwright-core drives it; it downloads no browser of its own)
  chromium
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  # Another apt/dpkg run (a second set-up, unattended-upgrades) may hold the lock:
  # wait for it (apt says "Waiting for cache lock … held by process N") instead of failing at once.
  lock_timeout="${EOS_APT_LOCK_TIMEOUT:-600}"
  echo "setup: if another apt/dpkg run holds the lock, waiting up to ${lock_timeout}s for it"
  apt_opts=(-o "DPkg::Lock::Timeout=${lock_timeout}")
  "${sudo_cmd[@]}" apt-get "${apt_opts[@]}" update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get "${apt_opts[@]}" install -y -q --no-install-recommends "${missing[@]}"
fi

# qemu-user runs foreign binaries through binfmt_misc; some containers start without it mounted.
if [ ! -e /proc/sys/fs/binfmt_misc/status ] && [ "$(id -u)" -eq 0 ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || echo "setup: cannot mount binfmt_misc: no aarch64 builds"
fi
# A machine that mounted binfmt_misc after boot has the package's handler file but not the handler.
if [ -e /proc/sys/fs/binfmt_misc/status ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] &&
  [ -e /usr/lib/binfmt.d/qemu-aarch64.conf ] && [ "$(id -u)" -eq 0 ]; then
  /usr/lib/systemd/systemd-binfmt /usr/lib/binfmt.d/qemu-aarch64.conf ||
    echo "setup: cannot register the qemu-aarch64 binfmt handler: no aarch64 builds"
fi

# better-sqlite3 publishes no binary for this Node, so every npm ci of a fresh clone compiled
# it (about a minute). prebuild-install looks in a local directory before it compiles: keep
# the binary compiled here there, keyed by version, Node ABI and architecture.
prebuilds="${EOS_PREBUILD_CACHE:-/var/cache/eos/prebuilds}"
export npm_config_better_sqlite3_local_prebuilds="$prebuilds"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund
else
  npm run --silent build
fi
sqlite_dir=node_modules/better-sqlite3
if [ -e "$sqlite_dir/build/Release/better_sqlite3.node" ]; then
  tarball="$prebuilds/better-sqlite3-v$(node -p "require('./$sqlite_dir/package.json').version")-node-v$(node -p process.versions.modules)-linux-$(node -p process.arch).tar.gz"
  if [ ! -e "$tarball" ] && mkdir -p "$prebuilds" 2>/dev/null; then
    tar -czf "$tarball.tmp-$$" -C "$sqlite_dir" build/Release/better_sqlite3.node && mv "$tarball.tmp-$$" "$tarball" &&
      echo "setup: kept the compiled better-sqlite3 in $tarball" || rm -f "$tarball.tmp-$$"
  fi
fi
