#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) and prints, per
# target, the executions and whether it found anything. Exits non-zero when
# a target crashed (a panic, an assertion, a timeout or running out of
# memory); the input that did it is kept in fuzz/artifacts/TARGET/ and can
# be replayed with `cargo fuzz run -s none TARGET artifacts/TARGET/FILE` in fuzz/.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# The corpora grow in fuzz/corpus/TARGET (not committed) and are seeded
# from the shipped rules, config and example cases on every run.
set -uo pipefail
cd "$(dirname "$0")"

seconds=${1:-60}
shift || true
all=(rules_parse config_parse render_hostile segments intake_json)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

# The project's pinned (stable) toolchain builds the targets: without a
# sanitizer, cargo-fuzz passes rustc only stable flags (-C passes=sancov-module
# and LLVM options). FUZZ_TOOLCHAIN=nightly picks another toolchain.
cargo=(cargo ${FUZZ_TOOLCHAIN:+"+$FUZZ_TOOLCHAIN"})
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet || exit 1
fi

# No sanitizer: tidings forbids unsafe code, so AddressSanitizer would
# mostly slow the runs down (and it needs nightly). Debug assertions stay
# on, so arithmetic overflow panics.
build=(fuzz build --sanitizer none --debug-assertions)
echo "== building the fuzz targets"
log=$(mktemp)
if ! "${cargo[@]}" "${build[@]}" >"$log" 2>&1; then
  cat "$log"
  echo "build failed"
  exit 1
fi
grep -E 'Finished' "$log"
rm -f "$log"

seed() {
  local dir=corpus/$1
  mkdir -p "$dir"
  case $1 in
    rules_parse) cp ../rules/*.yaml "$dir"/ ;;
    config_parse)
      cp ../tidings.yaml "$dir"/tidings.yaml
      cp ../packaging/tidings.yaml "$dir"/packaging-tidings.yaml ;;
    intake_json)
      for f in ../examples/*.json; do cp "$f" "$dir"/; done
      # One event a file, without the simulator's `at`.
      n=0
      while IFS= read -r line; do
        n=$((n + 1))
        printf '%s' "$line" | sed -E 's/"at": *"[^"]*", *//' > "$dir/event-$n.json"
      done < ../examples/events.jsonl ;;
    *) ;;
  esac
}

# Inputs up to a long rule or config file, and an intake body with a
# note at its 10,000-character limit. Hostile case fields grow from short
# inputs (fuzz/src/lib.rs repeats fragments).
max_len() {
  case $1 in
    rules_parse | config_parse) echo 8192 ;;
    intake_json) echo 16384 ;;
    *) echo 4096 ;;
  esac
}

failed=0
summary=()
for t in "${targets[@]}"; do
  seed "$t"
  log=$(mktemp)
  echo "== $t for ${seconds}s"
  "${cargo[@]}" fuzz run "${build[@]:2}" "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
  rate=$(grep -oE 'exec/s: *[0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$')
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$')
  if [ $rc -eq 0 ]; then
    found="nothing found"
  else
    failed=1
    found="FOUND: $(grep -m1 -oE 'panicked at .*|ERROR: libFuzzer: .*|Test unit written to .*' "$log" | head -1)"
    sed -n '/panicked at/,/stack backtrace/p' "$log" | head -20
    grep -E 'Test unit written to' "$log"
  fi
  line=$(printf '%-15s %12s executions  %6s exec/s  cov %-6s %s' \
    "$t" "${execs:-0}" "${rate:-?}" "${cov:-?}" "$found")
  echo "$line"
  summary+=("$line")
  rm -f "$log"
done

echo
echo "== fuzz summary (${seconds}s a target)"
printf '%s\n' "${summary[@]}"
exit $failed
