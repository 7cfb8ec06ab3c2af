#!/usr/bin/env bash
# Long fuzzing run of one target: fuzz/run-long.sh TARGET SECONDS
# New inputs go to a scratch corpus (the committed seed corpus stays small);
# crashes land in fuzz/artifacts/TARGET/.
set -euo pipefail
target=${1:?usage: fuzz/run-long.sh TARGET SECONDS}
seconds=${2:?usage: fuzz/run-long.sh TARGET SECONDS}
cd "$(dirname "$0")"
scratch=${FUZZ_SCRATCH:-/tmp/latchkey-fuzz-corpus}/$target
mkdir -p "$scratch"
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then fuzz=(cargo +nightly fuzz); else fuzz=(env RUSTC_BOOTSTRAP=1 cargo fuzz); fi
# FUZZ_JOBS=N runs N processes (libFuzzer then logs to fuzz-K.log here).
parallel=()
if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then parallel=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS"); fi
"${fuzz[@]}" run "$target" "$scratch" "corpus/$target" -- \
  -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 "${parallel[@]}"
