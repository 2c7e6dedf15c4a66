# PostgreSQL for bench/run, sourced by it: a throwaway cluster, pgbench's
# upsert reference, and tidings replicas on the cluster (the `replicas`
# step). Uses bench/run's variables (WORK, REPO, BIN, TOKEN, CONNECTIONS,
# DURATION, PIDS, PG_DATA) and bench/lib.sh.
# shellcheck shell=bash

# Starts a cluster in $WORK/pg (once): PG_PORT, PG_DATA.
pg_start() {
  [ -n "${PG_DATA:-}" ] && return
  PG_PORT=$(free_port)
  PG_DIR=$WORK/pg
  mkdir -p "$PG_DIR"
  [ "$(id -u)" = 0 ] && chown postgres "$PG_DIR"
  as_postgres initdb -D "$PG_DIR/data" -A trust -U postgres >"$WORK/initdb.log" 2>&1
  PG_DATA=$PG_DIR/data
  as_postgres pg_ctl -D "$PG_DATA" -l "$PG_DIR/log" -w \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c synchronous_commit=on -c fsync=on -c max_connections=200" \
    start >/dev/null
}

pg_stop() {
  [ -n "${PG_DATA:-}" ] || return 0
  as_postgres pg_ctl -D "$PG_DATA" -m fast stop >/dev/null
  PG_DATA=
}

psql() { as_postgres /usr/lib/postgresql/15/bin/psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }

# pgbench, CONNECTIONS clients for DURATION: one JSONB upsert of the case
# document per transaction; sets PG_TPS, PG_P50 and PG_P99 (ms).
pgbench_upsert() {
  psql -c 'CREATE TABLE IF NOT EXISTS bench_cases (id bigint PRIMARY KEY, doc jsonb NOT NULL)'
  local doc='{"subject":"Replacement router has not shipped","status":"open","priority":"normal","customer":{"name":"Maria Hernandez","email":"c1-1@example.com","timezone":"America/New_York","locale":"en"},"assignee":"Jordan","tags":["hardware","rma"],"fields":{"order":"RMA-20931","plan":"business"}}'
  cat >"$PG_DIR/upsert.sql" <<SQL
\set id random(1, 1000000000000)
INSERT INTO bench_cases (id, doc) VALUES (:id, '$doc') ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc;
SQL
  chmod 644 "$PG_DIR/upsert.sql"
  rm -f "$PG_DIR"/tx*
  local out
  out=$(as_postgres pgbench -n -h 127.0.0.1 -p "$PG_PORT" -U postgres -M prepared \
    -c "$CONNECTIONS" -j 2 -T "$DURATION" -f "$PG_DIR/upsert.sql" -l --log-prefix="$PG_DIR/tx" postgres 2>&1)
  echo "$out" >>"$WORK/pgbench.log"
  PG_TPS=$(awk '/^tps = / { printf "%.0f", $3 }' <<<"$out")
  cat "$PG_DIR"/tx* | awk '{ print $3 / 1000 }' | sort -n >"$PG_DIR/latency"
  PG_P50=$(pct 0.50 "$PG_DIR/latency"); PG_P99=$(pct 0.99 "$PG_DIR/latency")
}

# replicas_up N NAME SINK_PORT RULES: a fresh database NAME and N daemons
# on it (config dirs $WORK/NAME-1…N); sets REPLICA_PORTS and REPLICA_PIDS.
# With IMPORT_FILE set, its cases are imported before the daemons start.
replicas_up() {
  local n=$1 name=$2 sink=$3 rules=$4 i d
  psql -c "CREATE DATABASE $name"
  export BENCH_DATABASE_URL="host=127.0.0.1 port=$PG_PORT user=postgres dbname=$name"
  REPLICA_PORTS=() REPLICA_PIDS=()
  for i in $(seq 1 "$n"); do
    d=$WORK/$name-$i
    write_config "$d" "$(free_port)" "$sink" "$rules" "store:
  postgres:
    url_env: BENCH_DATABASE_URL
    pool_size: 16
    lease: 10s"
  done
  if [ -n "${IMPORT_FILE:-}" ]; then
    import "$WORK/$name-1" "$IMPORT_FILE"
  fi
  for i in $(seq 1 "$n"); do
    start_daemon "$WORK/$name-$i"
    REPLICA_PORTS+=("$PORT") REPLICA_PIDS+=("$DAEMON_PID")
  done
}

replicas_down() {
  local p
  for p in "${REPLICA_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${REPLICA_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}

# replicas_put: wrk PUTs new cases on every replica at once, the
# CONNECTIONS shared among them; sets RPS (the sum), P99 (the worst) and
# NON2XX (the sum).
replicas_put() {
  local n=${#REPLICA_PORTS[@]} per i out=() pids=()
  per=$(( CONNECTIONS / n ))
  for i in "${!REPLICA_PORTS[@]}"; do
    out+=("$WORK/wrk-replica-$i.txt")
    wrk -t1 -c"$per" -d"${DURATION}s" --latency "http://127.0.0.1:${REPLICA_PORTS[$i]}/" \
      -s bench/put.lua -- "$TOKEN" "r$i" >"${out[$i]}" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i"; done
  cat "${out[@]}" >>"$WORK/wrk.log"
  RPS=$(awk '/^Requests\/sec:/ { s += $2 } END { printf "%.0f", s }' "${out[@]}")
  P99=$(awk '$1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        f = (u == "us") ? 0.001 : (u == "s") ? 1000 : 1; if (v * f > m) m = v * f } END { printf "%.2f", m }' "${out[@]}")
  NON2XX=$(awk '/Non-2xx/ { s += $NF } END { print s + 0 }' "${out[@]}")
}

# The `replicas` step: durable intake and an email burst with 1 and 3
# replicas on one database, against pgbench on the same cluster.
replicas_step() {
  say "replicas: tidings on PostgreSQL, 1 and 3 replicas"
  pg_start
  [ -n "${PG_TPS:-}" ] || pgbench_upsert
  local n sink dir lead due rules
  for n in 1 3; do
    sink=$(free_port)
    start_sink "$WORK/replicas-put-sink-$n" "$sink"
    IMPORT_FILE='' replicas_up "$n" "put_$n" "$sink" "rules:
  - name: progress
    when: { status: [open] }
    every: 1d
    channels: [email]
    template: progress
on:
  created: { template: acknowledgement, channels: [email] }"
    replicas_put
    replicas_down
    [ "$NON2XX" = 0 ] || { echo "bench/run: $NON2XX PUTs to $n replicas were not 2xx" >&2; exit 1; }
    figure "replicas: $n on PostgreSQL, durable PUT" "$RPS" "req/s" "pgbench JSONB upsert" "$PG_TPS"
    figure "replicas: $n on PostgreSQL, PUT p99" "$P99" "ms" "pgbench p99" "$PG_P99"

    # The email burst: REPLICA_BURST updates due at one instant.
    dir=$WORK/replicas-burst-$n
    mkdir -p "$dir"
    sink=$(free_port)
    start_sink "$dir/sink" "$sink"
    cases "$REPLICA_BURST" "b$n-" email >"$dir/cases.jsonl"
    lead=$(( SMOKE == 1 ? 8 : 6 + REPLICA_BURST / 500 ))
    due=$(( $(date +%s) + lead ))
    IMPORT_FILE=$dir/cases.jsonl replicas_up "$n" "burst_$n" "$sink" "rules:
  - name: burst
    when: { status: [open] }
    cron: \"$(cron_at "$due")\"
    channels: [email]
    template: progress"
    [ "$(date +%s)" -lt "$due" ] || { echo "bench/run: the replicas' import ran past the due instant" >&2; exit 1; }
    wait_files "$dir/sink" "$REPLICA_BURST" 600
    find "$dir/sink" -type f -printf '%T@\n' | sort -n >"$dir/arrivals"
    local secs rate ids dups
    secs=$(awk -v a="$(tail -1 "$dir/arrivals")" -v b="$(head -1 "$dir/arrivals")" 'BEGIN { printf "%.3f", a - b }')
    rate=$(awk -v n="$REPLICA_BURST" -v s="$secs" 'BEGIN { printf "%.0f", (n - 1) / s }')
    # Give a duplicate time to arrive, then count Message-IDs.
    sleep 2
    replicas_down
    ids=$(grep -h -m1 -i '^Message-ID:' "$dir"/sink/* | sort | uniq | wc -l)
    dups=$(( $(count_files "$dir/sink") - ids ))
    figure "replicas: $n on PostgreSQL, $REPLICA_BURST due at once" "$rate" "msg/s" "smtp-source" "${REF_RATE:-0}"
    figure "replicas: $n on PostgreSQL, burst duplicates" "$dups" "msgs"
  done
}
