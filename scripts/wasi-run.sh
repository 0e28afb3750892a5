#!/usr/bin/env bash
# cargo's target runner for wasm32-wasip1 test binaries: runs them under Node's WASI
# (scripts/wasi-runner.mjs) and exits with the test binary's own exit code.
#
# Each test runs in its own Node process: in one long-lived instance, V8 (Node 20) has been seen
# to crash with SIGSEGV once tests had grown the module's memory by tens of MiB, after they had
# all passed. With arguments (a filter, --list...) the binary runs once, as cargo asked.
set -u
wasm=$1
shift

run_once() {
    local code node_status
    status_file=$(mktemp)
    # Removed also if the run is interrupted (a trap of the shell that runs this, which may be
    # a command substitution's subshell).
    trap 'rm -f "$status_file"' EXIT
    node --no-warnings "$(dirname "$0")/wasi-runner.mjs" "$status_file" "$wasm" "$@"
    node_status=$?
    code=$(cat "$status_file" 2>/dev/null)
    rm -f "$status_file"
    trap - EXIT
    # A failed test aborts (a trap) and leaves no code: Node's failure status stands.
    if [ -n "$code" ]; then return "$code"; fi
    return "$node_status"
}

if [ $# -gt 0 ]; then
    run_once "$@"
    exit $?
fi

tests=$(run_once --list --format terse 2>/dev/null | sed -n 's/: test$//p')
passed=0
failed=0
for t in $tests; do
    if out=$(run_once --exact "$t" 2>&1); then
        passed=$((passed + 1))
        echo "test $t ... ok"
    else
        failed=$((failed + 1))
        echo "test $t ... FAILED"
        echo "$out" | tail -n 30
    fi
done
echo
echo "wasm32: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
