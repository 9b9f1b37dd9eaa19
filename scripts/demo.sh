#!/usr/bin/env bash
# The demo: installs what it needs, then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if node dist/eos.mjs --help 2>/dev/null | grep -q "^  demo"; then
  exec node dist/eos.mjs demo "$@"
fi
exec node --import tsx scripts/server-demo.ts
