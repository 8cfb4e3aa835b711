#!/usr/bin/env bash
# Mutation check of the tests: every patch under test/mutants/ breaks one
# behaviour on purpose, and names the test that must then fail. For each patch
# (or only those named: `bash scripts/mutants.sh switchover-timeout ...`) this
# applies it to a scratch worktree of HEAD, builds, runs the named test, and
# expects it to FAIL. Run it by hand, never in CI: each mutant costs a build
# and an integration test. Prints one line per mutant and a summary; exits 1
# when a mutant survived (its test passed) or could not be applied.
#
# `bash scripts/mutants.sh --baseline [name ...]` runs each mutant's test on
# HEAD unchanged and expects it to PASS: a test that fails for another reason
# (a -t filter that skips the tests it depends on) would "kill" any mutant.
#
# A patch file starts with header lines, then the diff (git apply skips the
# text before the first "diff --git"):
#   Breaks: what the patch breaks, in words
#   Test: test/integration/x.test.ts -t 'title'     (arguments to jest)
#   Drivers: local                                   (optional: RELEVO_TEST_DRIVERS)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
mutants_dir="$root/test/mutants"
results=$(mktemp)
scratch=$(mktemp -d /tmp/relevo-mutants.XXXXXX)
# Every mutant's log is kept, killed ones too: a kill for the wrong reason
# (a timeout under load, a set-up failure) is only seen by reading it.
logs=/tmp/relevo-mutant-logs/$(date +%Y%m%d-%H%M%S)
mkdir -p "$logs"
cleanup() {
  git -C "$root" worktree remove --force "$scratch/tree" >/dev/null 2>&1 || true
  rm -rf "$scratch"
}
trap cleanup EXIT INT TERM

baseline=0
if [ "${1:-}" = "--baseline" ]; then baseline=1; shift; fi
if [ $# -gt 0 ]; then
  patches=()
  for name in "$@"; do patches+=("$mutants_dir/${name%.patch}.patch"); done
else
  mapfile -t patches < <(ls "$mutants_dir"/*.patch 2>/dev/null | sort)
fi
[ ${#patches[@]} -gt 0 ] || { echo "mutants: no patch under test/mutants/" >&2; exit 2; }

git worktree add --detach "$scratch/tree" HEAD >/dev/null
tree="$scratch/tree"
# The dependencies and the generated Prisma client are not in git.
cp -al "$root/node_modules" "$tree/node_modules"
mkdir -p "$tree/src/generated" && cp -r "$root/src/generated/." "$tree/src/generated/"

header() { sed -n "s/^$2: *//p" "$1" | head -1; }
survived=0
for patch in "${patches[@]}"; do
  name=$(basename "$patch" .patch)
  if [ ! -f "$patch" ]; then echo "$name: no such patch" | tee -a "$results"; survived=1; continue; fi
  test_args=$(header "$patch" Test)
  drivers=$(header "$patch" Drivers)
  git -C "$tree" checkout --quiet -- . && git -C "$tree" clean -fdq -e node_modules -e src/generated
  if [ -z "$test_args" ] || { [ $baseline = 0 ] && ! git -C "$tree" apply "$patch"; }; then
    printf '%-44s %s\n' "$name" "NOT APPLIED (no Test: header or the patch no longer applies)" | tee -a "$results"
    survived=1
    continue
  fi
  started=$(date +%s)
  log="$logs/$name.log"
  if [ $baseline = 1 ]; then
    if (cd "$tree" && npx tsc -p tsconfig.json && eval "RELEVO_TEST_DRIVERS=${drivers:-${RELEVO_TEST_DRIVERS:-}} node node_modules/jest/bin/jest.js --runInBand $test_args") >"$log" 2>&1; then
      outcome="baseline passes"
    else
      outcome="BASELINE FAILS"
      survived=1
    fi
  elif ! (cd "$tree" && npx tsc -p tsconfig.json) >"$log" 2>&1; then
    outcome="BROKEN (does not compile)"
    survived=1
  elif (cd "$tree" && eval "RELEVO_TEST_DRIVERS=${drivers:-${RELEVO_TEST_DRIVERS:-}} node node_modules/jest/bin/jest.js --runInBand $test_args") >>"$log" 2>&1; then
    outcome="SURVIVED (the test passed)"
    survived=1
  else
    outcome="killed"
  fi
  printf '%-44s %-28s %4ss  %s\n' "$name" "$outcome" "$(( $(date +%s) - started ))" "$(header "$patch" Breaks)" | tee -a "$results"
done
echo
echo "logs: $logs"
if [ $baseline = 1 ]; then
  echo "baseline: $(grep -c 'baseline passes' "$results") pass, $(grep -c -E 'BASELINE FAILS|NOT APPLIED|no such' "$results") do not, of ${#patches[@]}"
  exit $survived
fi
echo "mutants: $(grep -c ' killed' "$results") killed, $(grep -c -E 'SURVIVED|NOT APPLIED|BROKEN|no such' "$results") not killed, of ${#patches[@]}"
exit $survived
