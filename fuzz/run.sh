#!/usr/bin/env bash
# Runs every fuzz target (or the ones named after the time) for SECONDS each (default 600) on a
# scratch copy of its committed corpus, and prints per target: executions, coverage (cov/ft of
# libFuzzer's final stats) and the crashes it found (reproducers under fuzz/artifacts/NAME/).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Environment: JOBS (targets run at once, default 1), SANITIZER (cargo fuzz -s: address (default)
# or none), FUZZ_ARGS (extra libFuzzer flags), NO_BUILD (use the binaries already built). Needs a nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`). The committed corpus is never written: new inputs go to
# fuzz/scratch/NAME (minimise them into the corpus with `cargo +nightly fuzz cmin` if they matter).
set -euo pipefail

cd "$(dirname "$0")/.."
secs="${1:-600}"
shift || true
jobs="${JOBS:-1}"
san="${SANITIZER:-address}"
all=(safetensors_header safetensors_index config quant_config processor_config
     generation_config image chat_template detokenizer)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${all[@]}"); fi

mkdir -p fuzz/logs fuzz/scratch
# Release with debug assertions and overflow checks (cargo fuzz's default), every target; the
# binaries are copied so that editing the crate during a run changes nothing under way.
if [ -z "${NO_BUILD:-}" ]; then
    cargo +nightly fuzz build -s "$san" 2>fuzz/logs/build.log || { tail -50 fuzz/logs/build.log; exit 1; }
fi
bin=fuzz/scratch/bin
mkdir -p "$bin"
for t in "${targets[@]}"; do
    cp "fuzz/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release/$t" "$bin/$t"
done

run_one() {
    local t="$1"
    local scratch="fuzz/scratch/$t"
    rm -rf "$scratch"
    mkdir -p "$scratch" "fuzz/artifacts/$t"
    cp fuzz/corpus/"$t"/* "$scratch"/
    local dict=()
    if [ -f "fuzz/dict/$t.dict" ]; then dict=(-dict="fuzz/dict/$t.dict"); fi
    touch "fuzz/logs/$t.start"
    # shellcheck disable=SC2086
    "$bin/$t" -artifact_prefix="fuzz/artifacts/$t/" -max_total_time="$secs" \
        -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 "${dict[@]}" ${FUZZ_ARGS:-} \
        "$scratch" >"fuzz/logs/$t.log" 2>&1 || true
}

report() {
    local t="$1" log="fuzz/logs/$1.log"
    local execs cov ft crashes
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    crashes=$(find "fuzz/artifacts/$t" -type f -newer "fuzz/logs/$t.start" | wc -l)
    printf '%-20s %12s %8s %8s %8s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$crashes"
    find "fuzz/artifacts/$t" -type f -newer "fuzz/logs/$t.start" -printf '    %p\n'
}

running=0
for t in "${targets[@]}"; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true # whichever run ends first frees its slot
        running=$((running - 1))
    fi
    run_one "$t" &
    running=$((running + 1))
done
wait

printf '%-20s %12s %8s %8s %8s\n' target executions cov ft crashes
for t in "${targets[@]}"; do report "$t"; done
