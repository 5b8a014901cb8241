#!/usr/bin/env bash
# Runs what `cargo test --all-targets` runs (the unit tests, each integration test, the examples
# and the benches in test mode; arguments are passed to cargo, e.g. --features), two test
# binaries at a time instead of one after the other. Most tests wait on sockets and timers, and
# a binary's run lasts as long as its slowest test, so one binary at a time leaves the machine
# idle. Each binary's output is printed whole when it ends; any failure fails the run, after
# every binary has run.
set -euo pipefail
cd "$(dirname "$0")/.."

# The test executables, as cargo names them ("Executable tests/dns.rs (target/debug/deps/dns-…)").
built=$(mktemp)
logs=$(mktemp -d)
trap 'rm -rf "$built" "$logs"' EXIT
${CARGO:-cargo} test --all-targets --no-run "$@" 2>&1 | tee "$built" >&2
mapfile -t exes < <(sed -n 's/^ *Executable .*(\(.*\))$/\1/p' "$built")
[ "${#exes[@]}" -gt 0 ] || { echo "tests: cargo built no test executable" >&2; exit 1; }

run() {
  local exe=$1 log
  log="$logs/$(basename "$exe").log"
  local status=0
  "$exe" >"$log" 2>&1 || status=$?
  # One binary's output at a time.
  flock "$logs" sh -c 'echo "     Running $0"; cat "$1"' "$exe" "$log"
  return "$status"
}
export -f run
export logs

failed=0
printf '%s\n' "${exes[@]}" | xargs -P "${TEST_JOBS:-2}" -I{} bash -c 'run "$1"' _ {} || failed=1
if [ "$failed" != 0 ]; then
  echo "tests: a test binary failed (its output is above)" >&2
  exit 1
fi
echo "tests: ${#exes[@]} test binaries passed"
