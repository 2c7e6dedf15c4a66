#!/usr/bin/env bash
# Hostile HTTP input: schemathesis against the real release binary.
#
# Starts `tidings serve` on a free loopback port with a temp data dir, the
# repo's rules and templates, file transports for email, SMS and WhatsApp
# (no peer needed) and a random API token (also the admin token, so one header opens
# every operation) and Twilio auth token (tests/hostile/st_hooks.py signs
# the webhook requests, SMS and WhatsApp, with it), then runs `st run` on /openapi.json with every check.
# Exits non-zero on any failure: a server error, a response the document
# does not describe, data the schema allows being refused, or data it
# forbids being accepted, ... — or when fewer than MIN_REQUESTS requests
# went out.
#
# Usage: tests/hostile/schemathesis.sh [EXAMPLES_PER_OPERATION]
#   ST_MAX_TIME=SECONDS   cap the run (the short CI version sets it)
#   ST_SEED=N             reproduce a run (default: a fixed seed)
#   MIN_REQUESTS=N        the floor on requests sent (default 1000)
#   TIDINGS_BIN=PATH      use this binary instead of building one
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

examples=${1:-${ST_MAX_EXAMPLES:-100}}
seed=${ST_SEED:-20261125}
min_requests=${MIN_REQUESTS:-1000}

if ! command -v "${ST:-st}" >/dev/null 2>&1; then
  echo "schemathesis is not installed: pip install schemathesis" >&2
  exit 1
fi

if [ -n "${TIDINGS_BIN:-}" ]; then
  bin=$TIDINGS_BIN
else
  cargo build --release --quiet --bin tidings
  bin="${CARGO_TARGET_DIR:-$root/target}/release/tidings"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/tidings-st-XXXXXX")
daemon_pid=
cleanup() {
  if [ -n "$daemon_pid" ]; then
    kill "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
  fi
  if [ -z "${ST_KEEP:-}" ]; then rm -rf "$work"; else echo "kept $work" >&2; fi
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
# Twilio's auth token: the daemon checks webhook signatures with it, and the
# hooks sign schemathesis' webhook requests with it (SMS still go to files).
TIDINGS_ST_TWILIO_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export TIDINGS_ST_TWILIO_TOKEN
export TIDINGS_ST_PUBLIC_URL="http://127.0.0.1:$port"
sha=$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)

cat >"$work/tidings.yaml" <<EOF
listen: 127.0.0.1:$port
data_dir: $work/data
rules: $root/rules
templates: $root/templates
default_timezone: UTC
default_locale: en
public_url: http://127.0.0.1:$port
company:
  name: Example Support
api:
  tokens:
    - source: schemathesis
      token_sha256: $sha
admin:
  token_sha256: $sha
email:
  transport: file
  file_dir: $work/outbox/email
  from: "Example Support <support@example.com>"
sms:
  transport: file
  file_dir: $work/outbox/sms
  account_sid: AC00000000000000000000000000000000
  auth_token_env: TIDINGS_ST_TWILIO_TOKEN
  help_text: "Example Support: reply STOP to opt out."
whatsapp:
  file_dir: $work/outbox/whatsapp
delivery:
  max_attempts: 3
  backoff: { initial: 1s, max: 5s }
EOF

"$bin" serve --config "$work/tidings.yaml" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 1 150); do
  if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$daemon_pid" 2>/dev/null; then
    echo "tidings exited before it was ready:" >&2
    cat "$work/daemon.log" >&2
    exit 1
  fi
  sleep 0.1
done

# One worker: with two, hypothesis parses lambda sources on two threads at
# once, and CPython 3.11's ast.parse is not safe for that ("AST constructor
# recursion depth mismatch", a runtime error in the run, not in tidings).
args=(
  run "http://127.0.0.1:$port/openapi.json"
  --checks all
  --header "Authorization: Bearer $token"
  --max-examples "$examples"
  --seed "$seed"
  --workers 1
  --generation-database none
  --report junit,ndjson
  --report-dir "$work/report"
  --no-color
)
if [ -n "${ST_MAX_TIME:-}" ]; then
  args+=(--max-time "$ST_MAX_TIME")
fi

export PYTHONPATH="$root/tests/hostile${PYTHONPATH:+:$PYTHONPATH}"
export SCHEMATHESIS_HOOKS=st_hooks
started=$(date +%s)
set +e
# From the temp dir, so schemathesis' own files stay out of the repo.
(cd "$work" && "${ST:-st}" --config-file "$root/tests/hostile/schemathesis.toml" "${args[@]}")
status=$?
set -e
elapsed=$(( $(date +%s) - started ))

# The figures from schemathesis' own event stream: every request it
# recorded, and the statuses each operation answered.
requests=$(python3 - "$work/report" <<'PY'
import collections, json, pathlib, sys
n = 0
per_op = collections.defaultdict(collections.Counter)
for path in pathlib.Path(sys.argv[1]).glob("*.ndjson"):
    for line in path.open():
        scenario = json.loads(line).get("ScenarioFinished")
        if not scenario:
            continue
        label = scenario["recorder"].get("label", "?")
        for interaction in scenario["recorder"].get("interactions", {}).values():
            n += 1
            status = (interaction.get("response") or {}).get("status_code", "no answer")
            per_op[label][status] += 1
for label in sorted(per_op):
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(per_op[label].items(), key=str))
    print(f"  {label:32} {sum(per_op[label].values()):5}  ({statuses})", file=sys.stderr)
print(n)
PY
)

if grep -q 'panicked' "$work/daemon.log"; then
  echo "the daemon panicked:" >&2
  grep -n 'panicked' "$work/daemon.log" >&2
  status=1
fi
if ! kill -0 "$daemon_pid" 2>/dev/null; then
  echo "the daemon died during the run:" >&2
  tail -n 20 "$work/daemon.log" >&2
  status=1
fi

echo "schemathesis: requests=$requests examples_per_operation=$examples seed=$seed runtime=${elapsed}s exit=$status"
if [ "$requests" -lt "$min_requests" ]; then
  echo "schemathesis: only $requests requests, fewer than $min_requests" >&2
  status=1
fi
exit "$status"
