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
prepare_pid=""
# A failing tier ends the run: the background image build ends with it.
on_exit() {
  if [ -n "$prepare_pid" ]; then kill "$prepare_pid" 2>/dev/null || true; fi
  summary
}
trap on_exit EXIT

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

# The vm tier's images build in the background while the integration tier runs: the builds
# are mostly mksquashfs, which takes the CPU that tier leaves idle. The vm tier reuses them
# from its caches (or builds them itself, and says why, if this failed).
if [[ " $tiers " == *" integration "* && " $tiers " == *" vm "* ]]; then
  mkdir -p .tmp
  echo "== vm images: building in the background (.tmp/prepare-vm.log)"
  prepare_t=$SECONDS
  nice -n 10 node --import tsx test/helpers/prepare-vm.ts >.tmp/prepare-vm.log 2>&1 &
  prepare_pid=$!
fi

for tier in $tiers; do
  if [ "$tier" = vm ] && [ -n "$prepare_pid" ]; then
    echo "== vm images: waiting for the background build"
    if wait "$prepare_pid"; then prepared="done"; else prepared="failed, the vm tier builds them"; fi
    prepare_pid=""
    grep '^prepare-vm:' .tmp/prepare-vm.log || tail -n 20 .tmp/prepare-vm.log
    step_done "vm images ($prepared; overlapped with the tiers before)" "$prepare_t"
  fi
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
