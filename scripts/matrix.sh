#!/usr/bin/env bash
# The storage matrix: the storage conformance suite and the core, SMS and
# reliability suites, run on the backend(s) named (default: both). The very
# same test files run on each: TIDINGS_TEST_STORE=postgres gives every
# test's daemon a fresh database on a throwaway cluster (tests/peers/).
# Tests about sled itself print `SKIPPED … sled only: …` on PostgreSQL.
#
#   scripts/matrix.sh             # sled, then postgres
#   scripts/matrix.sh postgres    # the PostgreSQL pass alone (as .ci/run)
#
# Extra arguments after `--` go to cargo test (`-- --release`).
# Needs the peers of .ci/run (smtp-sink, Prism, PostgreSQL 15); a missing
# one fails the run (TIDINGS_E2E_REQUIRED=1).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin" TIDINGS_E2E_REQUIRED=1

backends=()
while [ $# -gt 0 ]; do
  case "$1" in
    sled|postgres) backends+=("$1"); shift ;;
    --) shift; break ;;
    *) echo "usage: $0 [sled|postgres]... [-- cargo test options]" >&2; exit 2 ;;
  esac
done
[ ${#backends[@]} -gt 0 ] || backends=(sled postgres)

suites=(
  store_conformance
  # core
  e2e_smtp_sink daemon timeline promises cc page inbound mail_thread promise_audit
  # SMS
  e2e_twilio_prism twilio_faults whatsapp
  # reliability (crash at its CI size, TIDINGS_CRASH_KILLS as set)
  crash smtp_faults isolation supervision slow_clients erasure
)
args=()
for s in "${suites[@]}"; do args+=(--test "$s"); done

for b in "${backends[@]}"; do
  start=$(date +%s)
  echo "== matrix: ${b}"
  TIDINGS_TEST_STORE="$b" cargo test "$@" --no-fail-fast "${args[@]}"
  echo "== matrix: ${b} passed in $(( $(date +%s) - start ))s"
done
