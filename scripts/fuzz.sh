#!/usr/bin/env bash
# Time-bounded fuzzing of lbd's sans-I/O HTTP codec (cargo-fuzz / libFuzzer).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   # default: 60 s for each of
#                                           # request_head response_head chunked proxy_protocol
#
# Installs cargo-fuzz if missing (`cargo install cargo-fuzz --locked`). Only a
# stable toolchain is needed: cargo-fuzz's nightly-only flags are enabled with
# RUSTC_BOOTSTRAP=1. Each target starts from the committed seeds in
# fuzz/seeds/<target>/ plus whatever fuzz/corpus/<target>/ already holds (new
# inputs are written there; it is not committed). Prints executions, corpus
# size and crashes per target; exits 1 if any target crashed.
#
# Crash artifacts land in fuzz/artifacts/<target>/. Minimise one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz tmin <target> fuzz/artifacts/<target>/crash-…
# and turn it into a regression test in tests/hardening.rs.
#
# Set FUZZ_LOCK=/path/to/lockfile to run each build and target under
# `flock FILE` (for machines where CPU-heavy jobs take turns).
# Extra libFuzzer flags can be given in FUZZ_ARGS (e.g. FUZZ_ARGS=-jobs=2).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(request_head response_head chunked proxy_protocol)
fi
export RUSTC_BOOTSTRAP=1

locked() {
    if [ -n "${FUZZ_LOCK:-}" ]; then
        flock "$FUZZ_LOCK" "$@"
    else
        "$@"
    fi
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    locked cargo install cargo-fuzz --locked
fi

echo "==> building fuzz targets"
if [ ${#TARGETS[@]} -eq 1 ]; then
    locked cargo fuzz build --debug-assertions "${TARGETS[0]}"
else
    locked cargo fuzz build --debug-assertions   # every target, one build
fi

logdir=fuzz/logs
mkdir -p "$logdir"
status=0
summary=()
for t in "${TARGETS[@]}"; do
    corpus=fuzz/corpus/$t
    artifacts=fuzz/artifacts/$t
    mkdir -p "$corpus" "$artifacts"
    before=$(find "$artifacts" -type f | wc -l)
    log=$logdir/$t.log
    echo "==> fuzzing $t for ${SECONDS_PER_TARGET}s (log: $log)"
    set +e
    # shellcheck disable=SC2086
    locked cargo fuzz run --debug-assertions "$t" "$corpus" "fuzz/seeds/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 \
        -max_len=8192 -rss_limit_mb=2048 -timeout=10 ${FUZZ_ARGS:-} >"$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
    size=$(find "$corpus" -type f | wc -l)
    after=$(find "$artifacts" -type f | wc -l)
    crashes=$((after - before))
    line="$t: executions=${execs:-?} corpus=$size new_crashes=$crashes exit=$rc"
    summary+=("$line")
    if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
        status=1
        echo "!! $t failed; last lines of $log:"
        tail -30 "$log"
        find "$artifacts" -type f -newer "$log" -o -type f -name 'crash-*' | sed 's/^/   artifact: /'
    fi
done

echo
echo "==> summary (${SECONDS_PER_TARGET}s per target)"
printf '%s\n' "${summary[@]}"
exit $status
