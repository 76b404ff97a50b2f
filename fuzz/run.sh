#!/usr/bin/env bash
# Fuzzes every parser of untrusted input for a bounded time each.
#
#   bash fuzz/run.sh [seconds per target, default 60] [target ...]
#
# Needs the nightly toolchain and cargo-fuzz (installed if missing). Seeds
# in fuzz/corpus/<target>/seed-* are (re)written from the fixed keys of
# fuzz/src/lib.rs first, so they always verify; what libFuzzer finds
# besides stays in the corpus directory (not committed). Crashes land in
# fuzz/artifacts/<target>/. Prints one line per target: executions, corpus
# size, crashes. Not part of the test command (CI does not run it).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(mandate holder_block credential dpop jwk httpsig token_form details policy proxy_request mcp)
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mandate-fuzz}"
echo "==> build (nightly, release with debug assertions)" >&2
cargo +nightly fuzz build -O >&2
printf '%-14s %14s %8s %8s\n' target executions corpus crashes
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  MANDATE_FUZZ_SEEDS="$PWD/corpus" cargo +nightly fuzz run -O "$t" "corpus/$t" -- -runs=0 >/dev/null 2>&1 || true
  log="$(mktemp)"
  before=$(ls "artifacts/$t" | wc -l)
  cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 \
    >"$log" 2>&1 || true
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  after=$(ls "artifacts/$t" | wc -l)
  printf '%-14s %14s %8s %8s\n' "$t" "${execs:-0}" "$(ls "corpus/$t" | wc -l)" "$((after - before))"
  if [ "$after" -gt "$before" ]; then
    echo "    crash: $(ls -t "artifacts/$t" | head -1); log: $log" >&2
    grep -m5 -E 'panicked|ERROR|SUMMARY' "$log" >&2 || true
  else
    rm -f "$log"
  fi
done
