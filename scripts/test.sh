#!/usr/bin/env bash
# The test command: installs what it needs, then lint, format, types, and the
# three tiers. TIERS="unit integration" (or one of them) runs a subset.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step prints its wall time, and a summary closes the run (CI has a budget).
started=$SECONDS
timings=()
step_done() { timings+=("$1: $(($SECONDS - $2)) s"); echo "== $1 took $(($SECONDS - $2)) s"; }
summary() {
  echo "== times"
  printf '   %s\n' "${timings[@]}"
  echo "   total: $(($SECONDS - started)) s"
}
trap summary EXIT

t=$SECONDS
bash scripts/setup.sh
step_done setup $t
tiers=${TIERS:-"unit integration vm"}

echo "== lint, format, types"
t=$SECONDS
npx eslint .
npx prettier --check .
npx tsc --noEmit
step_done "lint, format, types" $t

for tier in $tiers; do
  echo "== tier: $tier"
  if ! compgen -G "test/$tier/*.test.ts" >/dev/null; then
    echo "tier $tier: no tests yet, skipped"
    continue
  fi
  t=$SECONDS
  if ! npm run --silent "test:$tier"; then
    step_done "tier $tier (failed)" $t
    exit 1
  fi
  step_done "tier $tier" $t
done
