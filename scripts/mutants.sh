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
# Mutants that name the same test share one baseline run.
#
# `--jobs N` (before the names) runs N mutants at once, each in a worktree of
# its own. The tests pick their ports and directories at run time, so runs do
# not collide; but timing-sensitive tests on a loaded machine fail for reasons
# of their own, so read the logs of what was killed, or keep N at 1.
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
scratch=$(mktemp -d /tmp/relevo-mutants.XXXXXX)
results="$scratch/results"
: >"$results"
# Every mutant's log is kept, killed ones too: a kill for the wrong reason
# (a timeout under load, a set-up failure) is only seen by reading it.
logs=/tmp/relevo-mutant-logs/$(date +%Y%m%d-%H%M%S)
mkdir -p "$logs"
trees=()
cleanup() {
  for tree in "${trees[@]}"; do git -C "$root" worktree remove --force "$tree" >/dev/null 2>&1 || true; done
  rm -rf "$scratch"
}
trap cleanup EXIT INT TERM

baseline=0
jobs=1
while [ $# -gt 0 ]; do
  case "$1" in
    --baseline) baseline=1; shift ;;
    --jobs) jobs="${2:-}"; shift 2 ;;
    *) break ;;
  esac
done
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "mutants: --jobs takes a positive number" >&2; exit 2; }
if [ $# -gt 0 ]; then
  patches=()
  for name in "$@"; do patches+=("$mutants_dir/${name%.patch}.patch"); done
else
  mapfile -t patches < <(ls "$mutants_dir"/*.patch 2>/dev/null | sort)
fi
[ ${#patches[@]} -gt 0 ] || { echo "mutants: no patch under test/mutants/" >&2; exit 2; }

header() { sed -n "s/^$2: *//p" "$1" | head -1; }

# A baseline runs each distinct test (arguments and drivers) once.
if [ $baseline = 1 ]; then
  declare -A seen=()
  distinct=()
  for patch in "${patches[@]}"; do
    [ -f "$patch" ] || { distinct+=("$patch"); continue; }
    key="$(header "$patch" Test)|$(header "$patch" Drivers)"
    if [ -n "${seen[$key]:-}" ]; then
      printf '%-44s %s\n' "$(basename "$patch" .patch)" "same test as ${seen[$key]}" | tee -a "$results"
      continue
    fi
    seen[$key]=$(basename "$patch" .patch)
    distinct+=("$patch")
  done
  patches=("${distinct[@]}")
fi

# Runs one mutant (or its baseline) in the given worktree and appends its line.
run_one() {
  local patch=$1 tree=$2 name test_args drivers started log outcome jest
  name=$(basename "$patch" .patch)
  if [ ! -f "$patch" ]; then echo "$name: no such patch" | tee -a "$results"; return; fi
  test_args=$(header "$patch" Test)
  drivers=$(header "$patch" Drivers)
  git -C "$tree" checkout --quiet -- . && git -C "$tree" clean -fdq -e node_modules -e src/generated
  if [ -z "$test_args" ] || { [ $baseline = 0 ] && ! git -C "$tree" apply "$patch"; }; then
    printf '%-44s %s\n' "$name" "NOT APPLIED (no Test: header or the patch no longer applies)" | tee -a "$results"
    return
  fi
  started=$(date +%s)
  log="$logs/$name.log"
  jest="RELEVO_TEST_DRIVERS=${drivers:-${RELEVO_TEST_DRIVERS:-}} node node_modules/jest/bin/jest.js --runInBand $test_args"
  if [ $baseline = 1 ]; then
    if (cd "$tree" && npx tsc -p tsconfig.json && eval "$jest") >"$log" 2>&1; then
      outcome="baseline passes"
    else
      outcome="BASELINE FAILS"
    fi
  elif ! (cd "$tree" && npx tsc -p tsconfig.json) >"$log" 2>&1; then
    outcome="BROKEN (does not compile)"
  elif (cd "$tree" && eval "$jest") >>"$log" 2>&1; then
    outcome="SURVIVED (the test passed)"
  else
    outcome="killed"
  fi
  printf '%-44s %-28s %4ss  %s\n' "$name" "$outcome" "$(( $(date +%s) - started ))" "$(header "$patch" Breaks)" | tee -a "$results"
}

# Each worker takes the next patch from a shared counter until none is left.
printf '%s\n' "${patches[@]}" >"$scratch/queue"
echo 0 >"$scratch/next"
worker() {
  local tree=$1 index patch
  while :; do
    index=$(flock "$scratch/next" bash -c 'i=$(cat "$1"); echo $((i + 1)) >"$1"; echo "$i"' _ "$scratch/next")
    patch=$(sed -n "$((index + 1))p" "$scratch/queue")
    [ -n "$patch" ] || return 0
    run_one "$patch" "$tree"
  done
}
[ "$jobs" -le ${#patches[@]} ] || jobs=${#patches[@]}
for ((job = 0; job < jobs; job++)); do
  tree="$scratch/tree$job"
  git worktree add --detach "$tree" HEAD >/dev/null
  trees+=("$tree")
  # The dependencies and the generated Prisma client are not in git.
  cp -al "$root/node_modules" "$tree/node_modules"
  mkdir -p "$tree/src/generated" && cp -r "$root/src/generated/." "$tree/src/generated/"
done
for ((job = 0; job < jobs; job++)); do worker "${trees[$job]}" & done
wait

echo
echo "logs: $logs"
total=$(grep -c '' "$results")
if [ $baseline = 1 ]; then
  echo "baseline: $(grep -c 'baseline passes' "$results") pass, $(grep -c 'same test as' "$results") share a test, $(grep -c -E 'BASELINE FAILS|NOT APPLIED|no such' "$results") do not pass, of $total"
  ! grep -q -E 'BASELINE FAILS|NOT APPLIED|no such' "$results"
  exit $?
fi
echo "mutants: $(grep -c ' killed' "$results") killed, $(grep -c -E 'SURVIVED|NOT APPLIED|BROKEN|no such' "$results") not killed, of $total"
! grep -q -E 'SURVIVED|NOT APPLIED|BROKEN|no such' "$results"
