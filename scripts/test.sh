#!/usr/bin/env bash
# The whole test suite: the test lab's set-up (scripts/setup-lab.sh, which installs only what is
# missing), formatting and lints (Rust and Python), the Rust workspace's tests with the aarch64
# build, the export tool's tests, and two minutes of the soak (scripts/soak.py). The AFL++ runs are
# not here: whoever changes a parser runs scripts/fuzz.sh (the lints keep its targets compiling;
# `cargo test` replays their corpora).
# Needs scripts/setup.sh to have run once. Every step runs even when an earlier one failed (and every
# Rust test binary, --no-fail-fast), except after a failed set-up; a summary at the end lists each
# step with its time against its budget (ARCHITECTURE.md, "Contributing: the test suite and its
# budget"), the total against CI's 90 minutes, and the slowest test binaries. The exit status is 1
# if any step failed.
#
# Every Rust compilation is in the release profile (clippy too, which then shares the build scripts
# and proc macros of the release build), so the tests share the dependencies that setup.sh built for
# target/release/clipcap instead of compiling everything a second time, and the daemon, kiosk and
# V4L2 tests drive the release binary that users run.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=target/test-logs
mkdir -p "$logs"
summary=()
failed=0
# Each step's budget in seconds, what it may take on a slow day (ARCHITECTURE.md, "Contributing"):
# with setup.sh's 480 s they make .ci/run's 2,880 of our 3,000; CI itself stops at 5,400.
declare -A BUDGET=([lab]=250 [format]=10 [python-lints]=10 [lints]=120 [build]=30 [cross]=220 [rust-tests]=860
    [export-tests]=660 [soak]=240)
BUDGET_TOTAL=2400 LIMIT=5400

step() {  # NAME COMMAND...: runs it, its output also in $logs/NAME.log
    local name=$1 start=$SECONDS status took
    shift
    printf '\n== %s: %s\n' "$name" "$*"
    "$@" 2>&1 | tee "$logs/$name.log"
    status=${PIPESTATUS[0]}
    ((status == 0)) || failed=1
    took=$((SECONDS - start))
    summary+=("$(printf '%-14s %-7s %5d s   budget %5d s%s' "$name" "$([ "$status" = 0 ] && echo ok || echo FAILED)" \
        "$took" "${BUDGET[$name]}" "$( ((took > BUDGET[$name])) && echo '  OVER BUDGET')")")
    return "$status"
}

report() {
    printf '\n== summary\n'
    printf '%s\n' "${summary[@]}"
    printf 'total          %13d s   budget %5d s   (CI: setup.sh, then this; it stops at %d s)\n' \
        "$SECONDS" "$BUDGET_TOTAL" "$LIMIT"
}

step lab bash scripts/setup-lab.sh || { report; printf '\nFAILED: the test lab could not be set up\n'; exit 1; }
step format cargo fmt --all -- --check
step python-lints export/.venv/bin/ruff check  # every Python file, by ruff.toml
# The fuzz targets' AFL++ entry points are linted too (feature afl), so they keep compiling.
step lints cargo clippy --release --workspace --all-targets --features clipcap-fuzz/afl --locked -- -D warnings
# The plugins (cdylibs) and the binary the export tests drive, up to date; then the tests.
step build cargo build --release --workspace --locked
step cross bash scripts/cross.sh --test  # the aarch64 build tests/aarch64.rs runs under qemu-user
step rust-tests cargo test --release --workspace --locked --no-fail-fast
step export-tests export/.venv/bin/python -m pytest -q --durations=5 export/tests
step soak bash scripts/soak.sh 120  # 2 minutes of the long mixed-load run (scripts/soak.py)

report
printf '\nslowest Rust test binaries:\n'
# "Running tests/x.rs (...)" is followed by that binary's "test result: ... finished in N s".
awk '/^ *(Running|Doc-tests) /{name=$2} /^test result:/{t=$NF; sub(/s$/, "", t); if (name != "") printf "%8.1f s  %s\n", t, name; name=""}' \
    "$logs/rust-tests.log" | sort -rn | head -n 8
if ((failed)); then
    printf '\nFAILED: %s\n' "$(printf '%s\n' "${summary[@]}" | awk '$2 == "FAILED" {print $1}' | tr '\n' ' ')"
    exit 1
fi
printf '\nall passed\n'
