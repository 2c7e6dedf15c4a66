# Helpers of bench/run, sourced by it (they use its variables: WORK, REPO,
# BIN, TOKEN, SENDERS, CONNECTIONS, DURATION, OUT, PIDS).
# shellcheck shell=bash

# A loopback port nothing listens on, below the kernel's ephemeral range
# (a port there may be the local end of an outgoing connection, which a
# probe does not see and a later bind fails on).
free_port() {
  local p low
  low=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  [ "$low" -gt 11000 ] || low=32768
  while :; do
    p=$(( 10000 + RANDOM % (low - 10000) ))
    (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}

now() { date +%s.%N; }
# awk arithmetic on its arguments: calc 'a / b' a b
calc() { awk -v a="$2" -v b="${3:-0}" "BEGIN { printf \"%.6g\", $1 }"; }

# figure NAME VALUE UNIT [REFERENCE-NAME REFERENCE-VALUE]
figure() {
  local name=$1 value=$2 unit=$3 ref=${4:-} refv=${5:-}
  if [ -n "$ref" ]; then
    local ratio
    ratio=$(awk -v a="$value" -v b="$refv" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
    printf '%-48s %12s %-8s ratio %5s  to %s %s %s\n' "$name" "$value" "$unit" "$ratio" "$ref" "$refv" "$unit"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$value" "$unit" "$ratio" "$ref" "$refv" >>"$OUT"
  else
    printf '%-48s %12s %-8s\n' "$name" "$value" "$unit"
    printf '%s\t%s\t%s\t\t\t\n' "$name" "$value" "$unit" >>"$OUT"
  fi
}

# Percentile Q (0..1) of the numbers in FILE (one a line, sorted).
pct() { awk -v q="$1" '{ a[NR] = $1 } END { i = int(q * NR); if (i < q * NR) i++; if (i < 1) i = 1; print a[i] }' "$2"; }

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# smtp-sink dumping each message into DIR, on PORT.
start_sink() {
  local dir=$1 port=$2 user=()
  mkdir -p "$dir"; chmod 777 "$dir"
  [ "$(id -u)" = 0 ] && user=(-u nobody)
  smtp-sink "${user[@]}" -d "$dir/%M." "127.0.0.1:$port" 1000 2>>"$WORK/sink.log" &
  PIDS+=($!)
  wait_port "$port"
}

wait_port() {
  local i
  for i in $(seq 1 300); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
    sleep 0.05
  done
  echo "bench/run: nothing listens on port $1" >&2
  tail -5 "$WORK/sink.log" >&2 2>/dev/null; exit 1
}

# Files in DIR.
count_files() { find "$1" -type f | wc -l; }

# Waits until DIR holds N files (fails after SECS).
wait_files() {
  local dir=$1 n=$2 secs=$3 deadline
  deadline=$(( $(date +%s) + secs ))
  while [ "$(count_files "$dir")" -lt "$n" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "bench/run: $(count_files "$dir") of $n messages in $dir after ${secs}s" >&2; exit 1; }
    sleep 0.1
  done
}

# write_config DIR PORT SMTP_PORT RULES_YAML [EXTRA_YAML]
write_config() {
  local dir=$1 port=$2 smtp=$3 rules=$4 extra=${5:-}
  mkdir -p "$dir/rules"
  printf '%s\n' "$rules" >"$dir/rules/rules.yaml"
  cat >"$dir/tidings.yaml" <<YAML
listen: 127.0.0.1:$port
data_dir: $dir/data
rules: $dir/rules
templates: $REPO/templates
default_timezone: UTC
default_locale: en
public_url: http://127.0.0.1:$port
company:
  name: Example Support
api:
  tokens:
    - source: helpdesk
      token_sha256: $(printf '%s' "$TOKEN" | sha256sum | cut -d' ' -f1)
email:
  transport: smtp
  smtp_url: smtp://127.0.0.1:$smtp
  from: "Example Support <support@example.com>"
  pool_size: $SENDERS
delivery:
  max_attempts: 10
  backoff: { initial: 1s, max: 10s }
  concurrency: $SENDERS
$extra
YAML
}

# Starts the daemon on DIR and waits for /readyz; sets DAEMON_PID, PORT
# and READY_SECS (spawn to the first 200). A port taken meanwhile (the
# machine is shared) is replaced by another.
start_daemon() {
  local dir=$1 t0 i attempt
  for attempt in 1 2 3 4 5; do
    PORT=$(awk -F: '/^listen:/ { print $3 }' "$dir/tidings.yaml")
    t0=$(now)
    "$BIN" serve --config "$dir/tidings.yaml" >>"$dir/daemon.log" 2>&1 &
    DAEMON_PID=$!
    PIDS+=("$DAEMON_PID")
    for i in $(seq 1 6000); do
      if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/readyz")" = 200 ]; then
        READY_SECS=$(calc 'a - b' "$(now)" "$t0")
        return
      fi
      kill -0 "$DAEMON_PID" 2>/dev/null || break
      sleep 0.01
    done
    if tail -3 "$dir/daemon.log" | grep -q "Address already in use"; then
      local port
      port=$(free_port)
      sed -i "s/127.0.0.1:$PORT\$/127.0.0.1:$port/" "$dir/tidings.yaml"
      continue
    fi
    tail -20 "$dir/daemon.log" >&2
    echo "bench/run: the daemon on $dir did not become ready" >&2; exit 1
  done
  echo "bench/run: no free port for the daemon on $dir" >&2; exit 1
}

stop_daemon() {
  kill -TERM "$DAEMON_PID"
  wait "$DAEMON_PID" 2>/dev/null || true
}

# import DIR FILE: `tidings import`, every line must go in; sets IMPORT_RATE.
import() {
  local t0 out
  t0=$(now)
  out=$("$BIN" import --config "$1/tidings.yaml" "$2" 2>"$1/import.log") \
    || { cat "$1/import.log" >&2; exit 1; }
  IMPORT_RATE=$(awk -v n="$(wc -l <"$2")" -v t0="$t0" -v t1="$(now)" 'BEGIN { printf "%.0f", n / (t1 - t0) }')
  echo "$out" >>"$1/import.log"
}

# cases N PREFIX CONTACT: N JSON lines; CONTACT is email or sms.
cases() {
  awk -v n="$1" -v p="$2" -v c="$3" 'BEGIN {
    for (i = 1; i <= n; i++) {
      if (c == "sms")
        contact = sprintf("\"phone\":\"+1212555%04d\",\"channels\":[\"sms\"]", i % 10000)
      else
        contact = sprintf("\"email\":\"%s%d@example.com\"", p, i)
      printf "{\"id\":\"%s%d\",\"subject\":\"Replacement router has not shipped\",\"priority\":\"normal\",\"customer\":{\"name\":\"Maria Hernandez\",%s},\"assignee\":\"Jordan\",\"tags\":[\"hardware\"],\"fields\":{\"order\":\"RMA-%d\"}}\n", p, i, contact, i
    }
  }'
}

# steady_cases PER_SEC SPREAD: PER_SEC cases tagged sK for each K below
# SPREAD, the recipient qKxI@example.com naming K.
steady_cases() {
  awk -v n="$1" -v spread="$2" 'BEGIN {
    for (k = 0; k < spread; k++)
      for (i = 1; i <= n; i++)
        printf "{\"id\":\"q%dx%d\",\"subject\":\"Replacement router has not shipped\",\"priority\":\"normal\",\"customer\":{\"name\":\"Maria Hernandez\",\"email\":\"q%dx%d@example.com\"},\"assignee\":\"Jordan\",\"tags\":[\"s%d\"],\"fields\":{\"order\":\"RMA-%d\"}}\n", k, i, k, i, k, i
  }'
}

# wrk_run URL [ARGS…]: sets RPS, P50 and P99 (ms), NON2XX.
wrk_run() {
  local url=$1 out; shift
  out=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" "$@")
  echo "$out" >>"$WORK/wrk.log"
  RPS=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
  ms() { awk -v q="$1" '$1 == q { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
         f = (u == "us") ? 0.001 : (u == "s") ? 1000 : (u == "m") ? 60000 : 1; printf "%.2f", v * f }' <<<"$out"; }
  P50=$(ms 50%); P99=$(ms 99%)
  NON2XX=$(awk '/Non-2xx/ { print $NF }' <<<"$out"); NON2XX=${NON2XX:-0}
}

# A cron expression (seconds first) firing at the epoch second AT, in UTC.
cron_at() { date -u -d "@$1" '+%-S %-M %-H * * *'; }

