#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of outside input (the harnesses of fuzz/src/lib.rs) with
# AFL++, through cargo-afl (installed and AFL++ built by this script on first use):
#   bash scripts/fuzz.sh SECONDS [TARGET...]      (default: every target of fuzz/corpus/)
# Whoever changes a parser of outside input runs it (docs/reliability.md); scripts/test.sh only keeps
# the targets compiling and replays their corpora (fuzz/tests/corpus.rs).
# builds the targets instrumented (in target/afl), fuzzes each for SECONDS from its committed corpus
# fuzz/corpus/TARGET/, and prints per target the executions, the inputs AFL++ kept for new coverage
# (its queue), the crashes and the hangs. Fails when a target saved a crash or a hang: the inputs are
# in target/afl/findings/TARGET/default/{crashes,hangs}/; each becomes a regression test in
# fuzz/regressions/TARGET/ with its fix. The HTTP targets need the release build and the demo bundle.
# AFL_OPT_LEVEL (cargo-afl's; default 3) sets the targets' optimisation: lower builds faster, runs slower.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
if (($#)); then
    targets=("$@")
else
    targets=()
    for dir in fuzz/corpus/*/; do targets+=("$(basename "$dir")"); done
fi

CARGO_AFL=0.18.2
# cargo-afl builds AFL++ from the sources in its crate (make and gcc; no LLVM plugins needed).
command -v cargo-afl >/dev/null || cargo install --locked cargo-afl --version "=$CARGO_AFL"
# afl-fuzz -h exits 1 even when AFL++ is built: its banner tells.
afl_help=$(cargo afl fuzz -h 2>&1 || true)
[[ $afl_help == *afl-fuzz++* ]] || cargo afl config --build

export CARGO_TARGET_DIR=target/afl
cargo afl build --release --locked -p clipcap-fuzz --features afl --bins

# No terminal UI, no core-pattern or CPU-governor requirements (an unprivileged machine), and no
# binding to a core (other work shares them).
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 AFL_NO_CRASH_README=1
findings=target/afl/findings
mkdir -p "$findings"
printf '%-14s %10s %8s %7s %7s %6s\n' target executions exec/s queue crashes hangs
failed=()
for target in "${targets[@]}"; do
    [ -d "fuzz/corpus/$target" ] || { echo "no fuzz target $target (fuzz/corpus/$target)" >&2; exit 2; }
    rm -rf "${findings:?}/$target"
    # The HTTP targets load the demo models in each fork of the target: their first input takes
    # seconds, not the milliseconds AFL++ would otherwise allow.
    case $target in http | last_event_id) timeout=(-t 10000) ;; *) timeout=(-t 1000) ;; esac
    cargo afl fuzz -i "fuzz/corpus/$target" -o "$findings/$target" -V "$seconds" "${timeout[@]}" \
        "target/afl/release/$target" > "$findings/$target.log" 2>&1 ||
        { tail -n 30 "$findings/$target.log" >&2; echo "afl-fuzz failed on $target" >&2; exit 1; }
    stats=$findings/$target/default/fuzzer_stats
    stat() { sed -n "s/^$1 *: *//p" "$stats"; }
    printf '%-14s %10s %8s %7s %7s %6s\n' "$target" "$(stat execs_done)" "$(stat execs_per_sec)" \
        "$(stat corpus_count)" "$(stat saved_crashes)" "$(stat saved_hangs)"
    if [ "$(stat saved_crashes)" != 0 ] || [ "$(stat saved_hangs)" != 0 ]; then failed+=("$target"); fi
done
if ((${#failed[@]})); then
    echo "crashes or hangs in: ${failed[*]} (inputs under $findings/TARGET/default/)" >&2
    exit 1
fi
