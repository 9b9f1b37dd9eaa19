#!/usr/bin/env bash
# The demo: installs what it needs, then runs `eos demo` (build, serve, boot,
# update, commit, roll back in QEMU). Extra arguments go to `eos demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node dist/eos.mjs demo "$@"
