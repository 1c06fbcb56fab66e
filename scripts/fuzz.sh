#!/usr/bin/env bash
# Runs the cargo fuzz targets of fuzz/ (docs/fuzzing.md).
#   scripts/fuzz.sh smoke [SECONDS]            every target for SECONDS (default 15), fresh corpus
#   scripts/fuzz.sh long SECONDS [TARGET...]   the named targets (default all), corpus kept in fuzz/corpus
# A crash fails the run; its input is left in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
mode=${1:-smoke}
secs=${2:-15}
shift $(( $# > 2 ? 2 : $# ))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)

# One build for every target (debug assertions on, sanitizer off: the code under test is safe
# Rust, and an uninstrumented build is several times faster to make and to run).
cargo +nightly fuzz build --sanitizer none

for t in "${targets[@]}"; do
  corpus="corpus/$t"
  if [ "$mode" = smoke ]; then
    corpus=$(mktemp -d)
  fi
  mkdir -p "$corpus"
  echo "== fuzz $t (${secs}s)"
  log=$(mktemp)
  status=0
  cargo +nightly fuzz run --sanitizer none "$t" "$corpus" -- \
    -max_total_time="$secs" -max_len=65536 -rss_limit_mb=1024 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^(#[0-9]+ *DONE|stat::number_of_executed_units|thread .* panicked|SUMMARY|.*Test unit written)' "$log" || true
  [ "$status" -eq 0 ] || tail -40 "$log" >&2
  rm -f "$log"
  if [ "$mode" = smoke ]; then rm -rf "$corpus"; fi
  if [ "$status" -ne 0 ]; then
    echo "fuzz: $t failed (exit $status); input in fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
