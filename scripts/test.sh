#!/usr/bin/env bash
# The whole test suite: formatting and lints, the Rust workspace's tests, the export tool's tests,
# each fuzz target for 15 seconds, and two minutes of the soak (scripts/soak.py).
# Needs scripts/setup.sh to have run once. Every step runs even when an earlier one failed (and every
# Rust test binary, --no-fail-fast); a summary at the end lists each step with its time, and the
# slowest test binaries. The exit status is 1 if any step failed.
#
# The Rust tests build in the release profile, so they share the dependencies that setup.sh built for
# target/release/clipcap instead of compiling everything a second time, and the daemon, kiosk and
# V4L2 tests drive the release binary that users run.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=target/test-logs
mkdir -p "$logs"
summary=()
failed=0

step() {  # NAME COMMAND...: runs it, its output also in $logs/NAME.log
    local name=$1 start=$SECONDS status
    shift
    printf '\n== %s: %s\n' "$name" "$*"
    "$@" 2>&1 | tee "$logs/$name.log"
    status=${PIPESTATUS[0]}
    ((status == 0)) || failed=1
    summary+=("$(printf '%-14s %-7s %5d s' "$name" "$([ "$status" = 0 ] && echo ok || echo FAILED)" $((SECONDS - start)))")
}

step format cargo fmt --all -- --check
step lints cargo clippy --workspace --all-targets --locked -- -D warnings
# The plugins (cdylibs) and the binary the export tests drive, up to date; then the tests.
step build cargo build --release --workspace --locked
step cross bash scripts/cross.sh  # the aarch64 build tests/aarch64.rs runs under qemu-user
step rust-tests cargo test --release --workspace --locked --no-fail-fast
step export-tests export/.venv/bin/python -m pytest -q --durations=5 export/tests
# Each fuzz target briefly from its corpus (fuzz/src/lib.rs). Built at opt-level 1 (cargo-afl's
# AFL_OPT_LEVEL; 3 by default), since 15 seconds need no speed and the instrumented build, one codegen
# unit per crate, is most of the step.
step fuzz env AFL_OPT_LEVEL=1 bash scripts/fuzz.sh 15
step soak bash scripts/soak.sh 120  # 2 minutes of the long mixed-load run (scripts/soak.py)

printf '\n== summary\n'
printf '%s\n' "${summary[@]}"
printf '\nslowest Rust test binaries:\n'
# "Running tests/x.rs (...)" is followed by that binary's "test result: ... finished in N s".
awk '/^ *(Running|Doc-tests) /{name=$2} /^test result:/{t=$NF; sub(/s$/, "", t); if (name != "") printf "%8.1f s  %s\n", t, name; name=""}' \
    "$logs/rust-tests.log" | sort -rn | head -n 8
if ((failed)); then
    printf '\nFAILED: %s\n' "$(printf '%s\n' "${summary[@]}" | awk '$2 == "FAILED" {print $1}' | tr '\n' ' ')"
    exit 1
fi
printf '\nall passed\n'
