#!/usr/bin/env bash
# Line coverage of the engine layer (src/engine/) by the unit tests alone
# (`cargo llvm-cov --lib`): one line per engine file, then the layer's total.
# Exits 1 when the total is below the floor (90 %, or ENGINE_COVERAGE_MIN),
# 2 when the report holds no engine file.
#
#   scripts/coverage.sh
#   ENGINE_COVERAGE_MIN=95 scripts/coverage.sh
#
# Test files under src/engine/ (tests.rs, more_tests.rs, a tests/ folder)
# are left out of the figures: they are what measures, not what is measured.
# Installs the llvm-tools component and cargo-llvm-cov when they are missing.
# The instrumented build goes to target/llvm-cov-target, apart from the
# ordinary one.
set -euo pipefail
cd "$(dirname "$0")/.."
floor="${ENGINE_COVERAGE_MIN:-90}"

if ! rustup component list --installed 2>/dev/null | grep -q '^llvm-tools'; then
  rustup component add llvm-tools-preview
fi
if ! cargo llvm-cov --version >/dev/null 2>&1; then
  cargo install cargo-llvm-cov --locked
fi

report="$(mktemp)"
trap 'rm -f "$report"' EXIT
cargo llvm-cov --lib --json --summary-only --output-path "$report"

python3 - "$report" "$floor" "$PWD/src/engine/" <<'EOF'
import json
import sys

report, floor, engine = sys.argv[1], float(sys.argv[2]), sys.argv[3]


def is_test(rel):
    parts = rel.split("/")
    return parts[-1] in ("tests.rs", "more_tests.rs") or "tests" in parts[:-1]


rows = []
with open(report) as f:
    for export in json.load(f)["data"]:
        for entry in export["files"]:
            name = entry["filename"]
            if name.startswith(engine) and not is_test(name[len(engine):]):
                lines = entry["summary"]["lines"]
                rows.append(("src/engine/" + name[len(engine):], lines["count"], lines["covered"]))
if not rows:
    print(f"coverage: no file under {engine} in the report", file=sys.stderr)
    sys.exit(2)

print(f"\n{'file':<28} {'lines':>7} {'missed':>7} {'cover':>8}")
for name, count, covered in sorted(rows):
    pct = 100.0 * covered / count if count else 100.0
    print(f"{name:<28} {count:>7} {count - covered:>7} {pct:>7.2f}%")
count = sum(r[1] for r in rows)
covered = sum(r[2] for r in rows)
total = 100.0 * covered / count if count else 100.0
print(f"{'engine total':<28} {count:>7} {count - covered:>7} {total:>7.2f}%")
if total < floor:
    print(f"coverage: engine lines {total:.2f}% < {floor:g}%", file=sys.stderr)
    sys.exit(1)
print(f"coverage: engine lines {total:.2f}% >= {floor:g}%")
EOF
