#!/usr/bin/env bash
# The ack_cost bench (benches/ack_cost.rs) on this tree and on an earlier
# revision, alternating runs in one session so both meet the same machine:
#
#   scripts/ack_cost_vs.sh [REV] [ROUNDS]
#
# REV defaults to 1d6426e (the store before the storage interface and the
# one write path); ROUNDS to 3. Prints every run's lines, prefixed `before`
# or `after`, then the median of each figure and the ratio after/before.
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${1:-1d6426e}"
rounds="${2:-3}"
here="$PWD"
base="$(mktemp -d)"
out="$(mktemp -d)"
trap 'git -C "$here" worktree remove --force "$base" >/dev/null 2>&1 || true; rm -rf "$out"' EXIT
git worktree add --detach --quiet "$base" "$rev"
# Separate target directories, so neither build evicts the other.
(cd "$base" && CARGO_TARGET_DIR="$here/target/ack-cost-before" cargo bench --bench ack_cost --no-run --quiet)
CARGO_TARGET_DIR="$here/target/ack-cost-after" cargo bench --bench ack_cost --no-run --quiet
for i in $(seq "$rounds"); do
  (cd "$base" && CARGO_TARGET_DIR="$here/target/ack-cost-before" cargo bench --quiet --bench ack_cost) \
    | grep '^ack_cost:' | sed 's/^/before /' | tee -a "$out/before"
  CARGO_TARGET_DIR="$here/target/ack-cost-after" cargo bench --quiet --bench ack_cost \
    | grep '^ack_cost:' | sed 's/^/after  /' | tee -a "$out/after"
done
python3 - "$out/before" "$out/after" <<'PY'
import re, statistics, sys
def rates(path):
    d = {}
    for line in open(path):
        m = re.match(r"\S+\s+ack_cost: (.+?)\s+median ([\d.]+) ms, p99 ([\d.]+) ms, (\d+) writes/s", line)
        if m:
            d.setdefault(m.group(1), []).append((float(m.group(2)), int(m.group(4))))
    return d
b, a = rates(sys.argv[1]), rates(sys.argv[2])
print("\nmedians over the rounds (before -> after, after/before):")
for what in b:
    bm = statistics.median(x[1] for x in b[what]); am = statistics.median(x[1] for x in a.get(what, [(0, 0)]))
    bl = statistics.median(x[0] for x in b[what]); al = statistics.median(x[0] for x in a.get(what, [(0, 0)]))
    print(f"  {what:<26} {bm:>7.0f} -> {am:>7.0f} writes/s ({am/bm:.2f}); median latency {bl:.3f} -> {al:.3f} ms")
PY
