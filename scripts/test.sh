#!/usr/bin/env bash
# The test command: installs what it needs, then lint, format, types, and the
# three tiers. TIERS="unit integration" (or one of them) runs a subset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
tiers=${TIERS:-"unit integration vm"}

echo "== lint, format, types"
npx eslint .
npx prettier --check .
npx tsc --noEmit

for tier in $tiers; do
  echo "== tier: $tier"
  if ! compgen -G "test/$tier/*.test.ts" >/dev/null; then
    echo "tier $tier: no tests yet, skipped"
    continue
  fi
  npm run --silent "test:$tier"
done
