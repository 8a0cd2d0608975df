#!/usr/bin/env bash
# `make bench`: agentgate against nginx and a bare pingora proxy, measured in one run.
#
#   benches/run.sh [main|cost|scale|sse|idle|ai|overload|soak|all]   (default: all)
#
# main   direct / nginx proxy / bare pingora / agentgate (all off) / agentgate (all on) /
#        agentgate with a local limit / with a global (Redis) limit: req/s, p50/p99,
#        CPU per request, alternating rounds; then p99 at 50% of the max rate (open loop)
# cost   instructions per request (callgrind): bare pingora, agentgate all-off and all-on
# scale  agentgate all-on, bare pingora and nginx at 1/2/4 threads x 50/500/5000 connections
# sse    10,000 concurrent SSE streams through the gateway: memory and fds per stream,
#        added delay per event
# idle   5,000 keep-alive connections after one request each: memory per connection,
#        and how much of it the gateway gives back once they close
# overload  open-loop load at 3x what a capacity-bound agent can serve, without and with
#        each overload protection: served and refused rates, admitted p50/p99, memory
# soak   30 minutes of mixed traffic with a reload every minute and an agent killed
#        every other minute: RSS every 10 s, failures set against the kills
#        (not part of `all`: run it on its own)
# ai     an SSE stream of 1,000 small OpenAI chunk events through a [routes.ai] route and
#        through the same route without it: instructions (callgrind) and CPU time
#        (user + kernel) per event
#
# Knobs: DURATION (s per run, 10), ROUNDS (5), WARMUP (s per system before round 1, 8),
#        COST_SECONDS (s counted under callgrind, 12), THREADS (1), CONNS (50),
#        STREAMS (10000), IDLE_CONNS (5000), AI_STREAMS (10), HALT_POLL_NS (see below),
#        COMPRESSION (all-on's [trace] compression: gzip, the default, or none),
#        CAPS (set: all-on adds max_in_flight = 100000 and balance = "peak_ewma", a cap
#        that never triggers and latency-aware balancing, to measure what they cost),
#        OVERLOAD_FACTOR (3), OVERLOAD_SECONDS (30), OVERLOAD_CONNS (200), SOAK_MINUTES (30),
#        BENCH_BIN and BENCH_EXAMPLES (both set: use these binaries, build nothing).
#
# HALT_POLL_NS: on a VM guest whose idle driver is haltpoll, how long an idle vCPU polls
# for work before it halts. 0 (as some hosts boot their guests) makes every wake-up of an
# idle core a VM exit: tens of microseconds that every proxy pays twice per request once
# the load is light enough for its core to go idle between requests. Unset leaves the
# machine as it is; set (e.g. 200000, the kernel's default), it applies to the whole run
# and the previous value comes back at the end. The tables name the value in force.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-all}"
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-5}"
WARMUP="${WARMUP:-8}"
COST_SECONDS="${COST_SECONDS:-12}"
THREADS="${THREADS:-1}"
CONNS="${CONNS:-50}"
STREAMS="${STREAMS:-10000}"
IDLE_CONNS="${IDLE_CONNS:-5000}"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

for cmd in nginx wrk redis-server taskset ss ps curl; do
  command -v "$cmd" >/dev/null || { echo "missing $cmd: run scripts/deps.sh bench (as root) first" >&2; exit 1; }
done
NGINX=$(command -v nginx)

# Every port the bench listens on must be free: a process left on one from another run
# would be measured in place of the bench's own (wait_port only sees that something
# listens).
BENCH_PORTS="18001 18002 18003 18004 18005 18006 18007 18009 18201 18202 18210 18211 18212 18213 18214 18215 18216 18217 18379 19004 19005 19006 19007 19202 19211 19213 19214"
busy=""
for p in $BENCH_PORTS; do
  if [ -n "$(ss -ltnH "sport = :$p")" ]; then busy="$busy $p"; fi
done
if [ -n "$busy" ]; then
  echo "ports in use:$busy. Stop what listens there first (ss -ltnp shows it): the bench would measure it instead of its own." >&2
  exit 1
fi

# BENCH_BIN / BENCH_EXAMPLES: run binaries built before (a copy kept aside, so a long
# soak is not disturbed by a rebuild); unset, the bench builds its own.
if [ -n "${BENCH_BIN:-}" ] && [ -n "${BENCH_EXAMPLES:-}" ]; then
  BIN=$BENCH_BIN
  EX=$BENCH_EXAMPLES
else
  echo "building (release)..." >&2
  cargo build --release --quiet --bin agentgate --example bare_pingora --example fixed_rate --example sse_hold --example idle_hold --example capacity_agent --example soak
  BIN=target/release/agentgate
  EX=target/release/examples
fi

W=$(mktemp -d /tmp/agentgate-bench.XXXXXX)
HALT_POLL_FILE=/sys/module/haltpoll/parameters/guest_halt_poll_ns
HALT_POLL_BEFORE=""
if [ -n "${HALT_POLL_NS:-}" ]; then
  if [ -w "$HALT_POLL_FILE" ]; then
    HALT_POLL_BEFORE=$(cat "$HALT_POLL_FILE")
    echo "$HALT_POLL_NS" > "$HALT_POLL_FILE"
  else
    echo "HALT_POLL_NS ignored: $HALT_POLL_FILE is not writable here (no haltpoll driver, or not root)" >&2
  fi
fi

PIDS=()
cleanup() {
  if [ -n "$HALT_POLL_BEFORE" ]; then echo "$HALT_POLL_BEFORE" > "$HALT_POLL_FILE"; fi
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

CORES=$(nproc)
# Pin apart where possible: the proxy under test on CPU 0, backend and load on CPU 1.
if [ "$CORES" -ge 2 ]; then PROXY_CPU="taskset -c 0"; LOAD_CPU="taskset -c 1"; else PROXY_CPU=""; LOAD_CPU=""; fi

BACKEND=127.0.0.1:18001
SINK=127.0.0.1:18009
# wait_port PORT [SECONDS]: until something listens on PORT (10 s unless told).
wait_port() {
  local tries=$(( ${2:-10} * 20 ))
  for _ in $(seq 1 "$tries"); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && { exec 3>&- 3<&-; return 0; }; sleep 0.05; done
  echo "port $1 never opened" >&2; return 1
}

# serve_nginx NAME LISTEN CONNECTIONS LOCATIONS: a one-worker nginx on the load core that
# answers from LOCATIONS itself (no access log, no upstream).
serve_nginx() {
  local dir="$W/$1"; mkdir -p "$dir"
  cat > "$dir/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log crit;
events { worker_connections $3; }
http {
  access_log off;
  client_body_temp_path $dir/tmp; proxy_temp_path $dir/tmp;
  fastcgi_temp_path $dir/tmp; uwsgi_temp_path $dir/tmp; scgi_temp_path $dir/tmp;
  keepalive_requests 10000000;
  server {
    listen $2;
    $4
  }
}
NGX
  $LOAD_CPU "$NGINX" -p "$dir" -c "$dir/nginx.conf" &
  PIDS+=($!)
  local addr="${2%% *}"
  wait_port "${addr#*:}"
}

start_backend() {
  serve_nginx backend "$BACKEND reuseport backlog=65535" 65536 \
    "location / { default_type application/json; return 200 '{\"items\":[{\"id\":\"conv-0001\",\"title\":\"hello\"}],\"next_cursor\":null}'; }"
  start_span_sink
}

# The OTLP span sink: a process of its own, as a collector is, so reading span batches
# never holds up the backend's answers (it shares the load core with them).
start_span_sink() {
  serve_nginx sink "$SINK backlog=1024" 1024 "location /v1/traces { return 200 ''; }"
}

start_nginx_proxy() { # port threads
  local dir="$W/nginx-$1"; mkdir -p "$dir"
  cat > "$dir/nginx.conf" <<NGX
worker_processes $2;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log crit;
events { worker_connections 65536; }
http {
  log_format json escape=json '{"ts":"\$time_iso8601","request_id":"\$request_id","method":"\$request_method","path":"\$request_uri","status":\$status,"duration":\$request_time,"upstream":"\$upstream_addr","upstream_time":"\$upstream_response_time","bytes_in":\$request_length,"bytes_out":\$bytes_sent,"client_ip":"\$remote_addr"}';
  access_log $dir/access.log json buffer=64k flush=1s;
  client_body_temp_path $dir/tmp; proxy_temp_path $dir/tmp;
  fastcgi_temp_path $dir/tmp; uwsgi_temp_path $dir/tmp; scgi_temp_path $dir/tmp;
  keepalive_requests 10000000;
  upstream agents { server $BACKEND; keepalive 256; keepalive_requests 10000000; }
  server {
    listen 127.0.0.1:$1 reuseport backlog=65535;
    location / { proxy_pass http://agents; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGX
  local pin="$PROXY_CPU"; [ "$2" -gt 1 ] && pin=""
  $pin "$NGINX" -p "$dir" -c "$dir/nginx.conf" &
  PIDS+=($!)
  wait_port "$1"
}

start_bare() { # port threads
  local pin="$PROXY_CPU"; [ "$2" -gt 1 ] && pin=""
  $pin "$EX/bare_pingora" "127.0.0.1:$1" "$BACKEND" "$2" >/dev/null 2>&1 &
  PIDS+=($!)
  wait_port "$1"
}

agentgate_config() { # port admin threads kind(off|on|local|global) backend
  local port=$1 admin=$2 threads=$3 kind=$4 backend=${5:-$BACKEND}
  local f="$W/agentgate-$port.toml"
  {
    echo "[server]"
    echo "listen = \"127.0.0.1:$port\""
    echo "admin_listen = \"127.0.0.1:$admin\""
    echo "threads = $threads"
    echo "grace_period = \"0s\""
    echo "[log]"
    echo "level = \"warn\""
    if [ "$kind" = on ]; then echo "access_log = \"$W/agentgate-$port-access.log\""; else echo "access_log = \"off\""; fi
    echo "[trace]"
    if [ "$kind" = on ]; then echo "otlp_endpoint = \"http://$SINK/v1/traces\""; echo "sample_ratio = 1.0"; echo "compression = \"${COMPRESSION:-gzip}\""; else echo "sample_ratio = 0.0"; fi
    echo "[upstreams.agents]"
    echo "backends = [\"$backend\"]"
    # Extra [upstreams.agents] keys, one per line (the overload bench's protections).
    if [ -n "${UPSTREAM_KEYS:-}" ]; then printf '%s\n' "$UPSTREAM_KEYS"; fi
    if [ "$kind" = on ] && [ -n "${CAPS:-}" ]; then
      # A cap that never triggers and latency-aware balancing: what they cost when idle.
      echo "max_in_flight = 100000"
      echo "balance = \"peak_ewma\""
    fi
    echo "[upstreams.agents.health]"
    echo "interval = \"5s\""
    echo "[[routes]]"
    echo "name = \"conversations\""
    echo "path_prefix = \"/\""
    echo "upstream = \"agents\""
    case "$kind" in
      on|local)
        echo "[routes.rate_limit]"
        echo "requests_per_second = 1000000.0"
        echo "burst = 1000000" ;;
      global)
        echo "[routes.rate_limit]"
        echo "key = \"global\""
        echo "requests_per_second = 1000000.0"
        echo "burst = 1000000"
        echo "scope = \"global\""
        echo "[rate_limit_store]"
        echo "redis_url = \"redis://127.0.0.1:18379\""
        echo "timeout = \"100ms\"" ;;
    esac
    if [ "$kind" = on ]; then
      echo "[routes.pagination]"
      echo "max_limit = 100"
      echo "[[alerts]]"
      echo "name = \"Errors\""
      echo "signal = \"error_ratio\""
      echo "above = 0.5"
      echo "window = \"1m\""
    fi
  } > "$f"
  echo "$f"
}

start_agentgate() { # port admin threads kind [backend]
  local cfg; cfg=$(agentgate_config "$@")
  local pin="$PROXY_CPU"; [ "$3" -gt 1 ] && pin=""
  $pin "$BIN" run --config "$cfg" >/dev/null 2>"$W/agentgate-$1.err" &
  PIDS+=($!)
  wait_port "$1"
}

pid_on_port() { ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2; }
# CPU ticks of a process and its children (nginx workers)
cpu_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    if [ -r "/proc/$p/stat" ]; then
      total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat") ))
    fi
  done
  echo "$total"
}
TICK=$(getconf CLK_TCK)

to_ms() { # "1.23ms" "456.00us" "1.2s" -> ms
  awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'
}

# measured_pid PORT: the process whose CPU counts for PORT (for nginx, the master, whose
# tree holds the workers).
measured_pid() {
  local pid; pid=$(pid_on_port "$1")
  local master; master=$(ps -o ppid= -p "$pid" | tr -d ' ')
  if ps -o comm= -p "$master" | grep -q nginx; then pid=$master; fi
  echo "$pid"
}

# cpu_per_request TICKS REQUESTS: CPU microseconds per request.
cpu_per_request() {
  awk -v t="$1" -v hz="$TICK" -v n="$2" 'BEGIN { if (n > 0) printf "%.2f", t / hz * 1e6 / n; else print "nan" }'
}

# round_order ROUND LIST: LIST as given in odd rounds, reversed in even ones.
round_order() {
  if [ $(( $1 % 2 )) -eq 0 ]; then echo "$2" | tr ' ' '\n' | tac | tr '\n' ' '; else echo "$2"; fi
}

# measure NAME PORT CONNS SECONDS -> appends "name rps p50 p99 cpu_us" to $W/results
measure() {
  local name=$1 port=$2 conns=$3 secs=$4
  local pid; pid=$(measured_pid "$port")
  local before; before=$(cpu_ticks "$pid")
  local out; out=$($LOAD_CPU wrk -t1 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$port/v1/conversations" 2>&1)
  local after; after=$(cpu_ticks "$pid")
  local rps; rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local total; total=$(echo "$out" | awk '/requests in/ {print $1}')
  local p50; p50=$(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')")
  local p99; p99=$(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')")
  local errors; errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  local cpu_us; cpu_us=$(cpu_per_request $(( after - before )) "$total")
  echo "$name $rps $p50 $p99 $cpu_us" >> "$W/results"
  [ -n "$errors" ] && echo "  $name: $errors" >&2
  echo "  $name: $rps req/s, p50 ${p50}ms, p99 ${p99}ms, ${cpu_us} us CPU/req" >&2
}

# ratio A B: A's req/s over B's in each round (results are written round by round, so
# the k-th line of each system is round k), as "**median** [r1 r2 ...]".
ratio() {
  awk -v a="$1" -v b="$2" '
    $1 == a { na++; va[na] = $2 }
    $1 == b { nb++; vb[nb] = $2 }
    END {
      n = (na < nb) ? na : nb
      for (i = 1; i <= n; i++) { r[i] = (vb[i] > 0) ? va[i] / vb[i] : 0; list = list sprintf("%s%.2f", (i > 1 ? " " : ""), r[i]) }
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (r[j] < r[i]) { t = r[i]; r[i] = r[j]; r[j] = t }
      m = (n % 2) ? r[(n + 1) / 2] : (r[n / 2] + r[n / 2 + 1]) / 2
      printf "**%.2fx** [%s]", m, list
    }' "$W/results"
}

median() { sort -n | awk '{a[NR]=$1} END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else printf "%.3f", (a[NR/2] + a[NR/2+1]) / 2 }'; }
col() { awk -v n="$1" -v c="$2" '$1 == n {print $c}' "$W/results" | median; }

machine() {
  local idle=""
  if [ -r "$HALT_POLL_FILE" ]; then idle=", guest halt polling $(( $(cat "$HALT_POLL_FILE") / 1000 )) µs"; fi
  echo "$(date -u +%Y-%m-%d), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), ${CORES} cores, $(free -g | awk '/Mem:/ {print $2}') GiB, Linux $(uname -r)$idle"
}

# open_loop RATE: every system at the same fixed rate (half the all-on maximum), ROUNDS
# alternating runs; appends "name p50_us p99_us cpu_us_per_request" to $W/open-loop.
# Tail latency is the noisiest number on a shared machine, so the table reports medians.
# nginx and bare pingora at the same rate show how much of the tail any proxy on this
# machine adds; the CPU per request at this rate shows how busy each worker really is.
open_loop() {
  local rate=$1 round target fr pid before after sent cpu
  echo "open loop at $rate req/s (50% of agentgate all-on max)..." >&2
  : > "$W/open-loop"
  local targets="direct:18001 nginx:18002 bare-pingora:18003 agentgate-off:18004 agentgate-on:18005"
  for round in $(seq 1 "$ROUNDS"); do
    for target in $(round_order "$round" "$targets"); do
      pid=$(measured_pid "${target#*:}")
      before=$(cpu_ticks "$pid")
      fr=$($LOAD_CPU "$EX/fixed_rate" "http://127.0.0.1:${target#*:}/v1/conversations" "$rate" "$DURATION" "$CONNS")
      after=$(cpu_ticks "$pid")
      sent=$(echo "$fr" | sed 's/.*sent=\([0-9]*\).*/\1/')
      cpu=$(cpu_per_request $(( after - before )) "$sent")
      echo "  open loop ${target%%:*}: $fr cpu_us_per_req=$cpu" >&2
      echo "${target%%:*} $(echo "$fr" | sed 's/.* p50_us=\([0-9]*\).*/\1/') $(echo "$fr" | sed 's/.* p99_us=\([0-9]*\).*/\1/') $cpu" >> "$W/open-loop"
    done
  done
}

# open_loop_table RATE: the open-loop medians as Markdown, p99 added over direct.
open_loop_table() {
  local rate=$1 name d99 p50 p99 cpu busy
  ol() { awk -v n="$1" -v c="$2" '$1 == n {print $c}' "$W/open-loop" | median; }
  d99=$(ol direct 3)
  echo
  echo "Open loop at $rate req/s (half the all-on maximum), $CONNS connections each paced by"
  echo "its own thread, medians of $ROUNDS alternating ${DURATION}s runs. Target: agentgate all-on"
  echo "adds at most 1 ms at p99. Core busy is CPU per request times the rate: the share of one"
  echo "core each proxy's process really uses at this rate."
  echo
  echo "| system | p50 ms | p99 ms | p99 added ms | CPU µs/req | core busy |"
  echo "|---|---:|---:|---:|---:|---:|"
  for name in direct nginx bare-pingora agentgate-off agentgate-on; do
    p50=$(ol "$name" 2); p99=$(ol "$name" 3); cpu=$(ol "$name" 4)
    busy=$(awk -v c="$cpu" -v r="$rate" 'BEGIN { printf "%.0f%%", c * r / 1e4 }')
    awk -v n="$name" -v a="$p50" -v b="$p99" -v d="$d99" -v c="$cpu" -v u="$busy" \
      'BEGIN { if (n == "direct") printf "| %s | %.3f | %.3f | - | - | - |\n", n, a / 1000, b / 1000; else printf "| %s | %.3f | %.3f | %.3f | %s | %s |\n", n, a / 1000, b / 1000, (b - d) / 1000, c, u }'
  done
}

run_main() {
  : > "$W/results"
  start_backend
  redis-server --port 18379 --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
  PIDS+=($!)
  wait_port 18379
  start_nginx_proxy 18002 "$THREADS"
  start_bare 18003 "$THREADS"
  start_agentgate 18004 19004 "$THREADS" off
  start_agentgate 18005 19005 "$THREADS" on
  start_agentgate 18006 19006 "$THREADS" local
  start_agentgate 18007 19007 "$THREADS" global
  sleep 1
  # Each ratio below compares two systems that run next to each other, and every second
  # round runs in reverse order: a machine that speeds up or slows down during a round
  # then favours neither side of a pair over the rounds.
  local systems="direct:18001 nginx:18002 bare-pingora:18003 agentgate-on:18005 agentgate-off:18004 agentgate-local-limit:18006 agentgate-global-limit:18007"
  # Warm-up: a fresh process runs its first seconds slower (agentgate all-on ran 25% slower
  # in its first 8 s than after; with a 2 s warm-up its first round came out low in every
  # run).
  for s in $systems; do $LOAD_CPU wrk -t1 -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:${s#*:}/v1/conversations" >/dev/null 2>&1; done
  for round in $(seq 1 "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    for s in $(round_order "$round" "$systems"); do measure "${s%%:*}" "${s#*:}" "$CONNS" "$DURATION"; done
  done

  local on; on=$(col agentgate-on 2)
  local rate; rate=$(awk -v r="$on" 'BEGIN { printf "%d", r / 2 }')
  open_loop "$rate"
  echo
  echo "### Throughput and latency ($(machine))"
  echo
  echo "wrk -t1 -c$CONNS, ${DURATION}s runs, $ROUNDS alternating rounds (medians); $THREADS worker thread(s) each; tiny JSON from an nginx backend."
  echo
  echo "| system | req/s | p50 ms | p99 ms | CPU µs/req |"
  echo "|---|---:|---:|---:|---:|"
  for s in $systems; do
    local n=${s%%:*}
    echo "| $n | $(col "$n" 2) | $(col "$n" 3) | $(col "$n" 4) | $(col "$n" 5) |"
  done
  echo
  echo "Ratios are of req/s within each round (the two systems ran back to back), as the"
  echo "median over the rounds, with every round's ratio in brackets:"
  echo
  echo "- agentgate all-on / bare pingora: $(ratio agentgate-on bare-pingora) (required >= 0.90)"
  echo "- agentgate all-on / nginx (JSON access log): $(ratio agentgate-on nginx) (goal >= 1.00)"
  echo "- agentgate all-on / all-off: $(ratio agentgate-on agentgate-off) (observability cost; target >= 0.90)"
  echo "- local limit that never triggers / all-off: $(ratio agentgate-local-limit agentgate-off) (target >= 0.95)"
  echo "- global (Redis) limit / local limit: $(ratio agentgate-global-limit agentgate-local-limit)"
  open_loop_table "$rate"
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 1; PIDS=()
}

run_scale() {
  : > "$W/results"
  start_backend
  local secs="${SCALE_DURATION:-5}"
  echo
  echo "### Scaling ($(machine))"
  echo
  echo "One ${secs}s wrk run per cell; agentgate with everything on."
  echo
  echo "| threads | connections | agentgate req/s | bare pingora req/s | nginx req/s | agentgate p99 ms | agentgate CPU µs/req |"
  echo "|---:|---:|---:|---:|---:|---:|---:|"
  local port=18100
  for t in 1 2 4; do
    start_agentgate $port $((port + 1000)) "$t" on
    start_bare $((port + 1)) "$t"
    start_nginx_proxy $((port + 2)) "$t"
    sleep 1
    for c in 50 500 5000; do
      : > "$W/results"
      measure agentgate $port "$c" "$secs"
      measure bare $((port + 1)) "$c" "$secs"
      measure nginx $((port + 2)) "$c" "$secs"
      echo "| $t | $c | $(col agentgate 2) | $(col bare 2) | $(col nginx 2) | $(col agentgate 4) | $(col agentgate 5) |"
    done
    port=$((port + 10))
  done
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 1; PIDS=()
}

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }

# sse_memory COUNT: a fresh all-on gateway holds COUNT streams twice, one hold after
# the other; appends "count idle_kib open_kib idle_fds open_fds warm_idle_kib
# warm_open_kib" to $W/sse-memory, each sampled once every stream's answer has begun
# (sse_hold says so on standard error), and leaves the first hold's line in
# $W/sse-gw-COUNT.txt. The second hold runs on memory the first one used and gave back,
# as every hold after a gateway's first does: what a long-running gateway pays.
sse_memory() {
  local count=$1 agent=127.0.0.1:18201
  start_agentgate 18202 19202 1 on "$agent"
  sleep 1
  local gw; gw=$(pid_on_port 18202)
  local idle_rss idle_fds; idle_rss=$(rss_kb "$gw"); idle_fds=$(fds "$gw")
  local round out open_rss open_fds warm_idle warm_open i
  for round in fresh warm; do
    [ "$round" = warm ] && { sleep 3; warm_idle=$(rss_kb "$gw"); }
    echo "holding $count streams through the gateway ($SSE_TOKENS events, 1 s apart; $round heap)..." >&2
    out="$W/sse-gw-$count"; [ "$round" = warm ] && out="$W/sse-gw-$count-warm"
    "$EX/sse_hold" 127.0.0.1:18202 "$count" "$SSE_TOKENS" 2000 > "$out.txt" 2> "$out.err" &
    local hold=$!
    for i in $(seq 1 1200); do grep -q 'streaming=' "$out.err" && break; sleep 0.05; done
    if [ "$round" = fresh ]; then
      open_rss=$(rss_kb "$gw"); open_fds=$(fds "$gw")
      echo "  $(cat "$out.err"): RSS ${idle_rss} -> ${open_rss} KiB, fds ${idle_fds} -> ${open_fds}" >&2
    else
      warm_open=$(rss_kb "$gw")
      echo "  $(cat "$out.err"): RSS ${warm_idle} -> ${warm_open} KiB" >&2
    fi
    grep -q 'all_streaming=' "$out.err" || echo "  not every stream began: the figures below overstate the cost per stream" >&2
    wait "$hold"
  done
  echo "$count $idle_rss $open_rss $idle_fds $open_fds $warm_idle $warm_open" >> "$W/sse-memory"
  kill -INT "$(pid_on_port 18202)" 2>/dev/null || true
  for i in $(seq 1 100); do [ -z "$(ss -ltnH "sport = :18202")" ] && break; sleep 0.05; done
}

run_sse() {
  local agent=127.0.0.1:18201
  SSE_TOKENS=20
  # The gateway holds two descriptors per stream: the client connection and the agent
  # connection.
  local fd_limit; fd_limit=$(ulimit -n)
  if [ $(( STREAMS * 2 + 1000 )) -gt "$fd_limit" ]; then
    local fit=$(( (fd_limit - 1000) / 2 ))
    echo "open-file limit is $fd_limit (raise it with ulimit -n); holding $fit streams instead of $STREAMS" >&2
    STREAMS=$fit
  fi
  start_span_sink
  "$BIN" demo-agent --listen "$agent" --name bench-agent --token-delay 1s >/dev/null 2>&1 &
  PIDS+=($!)
  wait_port 18201
  rm -f "$W/sse-memory"
  # Three counts, each through a fresh gateway: the slope between them is what one more
  # stream costs, apart from what the first ones cost once (arenas, tables).
  local count
  for count in $(( STREAMS / 4 )) $(( STREAMS / 2 )) "$STREAMS"; do sse_memory "$count"; done
  echo "same load directly against the agent (baseline delay)..." >&2
  "$EX/sse_hold" "$agent" "$STREAMS" "$SSE_TOKENS" 2000 > "$W/sse-direct.txt" 2>/dev/null
  local g d
  g=$(cat "$W/sse-gw-$STREAMS.txt"); d=$(cat "$W/sse-direct.txt")
  local g50 d50 g99 d99
  g50=$(echo "$g" | sed 's/.*delay_p50_us=\([0-9]*\).*/\1/'); d50=$(echo "$d" | sed 's/.*delay_p50_us=\([0-9]*\).*/\1/')
  g99=$(echo "$g" | sed 's/.*delay_p99_us=\([0-9]*\).*/\1/'); d99=$(echo "$d" | sed 's/.*delay_p99_us=\([0-9]*\).*/\1/')
  echo
  echo "### $STREAMS concurrent SSE streams ($(machine))"
  echo
  echo "Demo agent, $SSE_TOKENS events per stream one second apart; gateway with everything on, 1 thread;"
  echo "memory sampled once every stream's answer has begun; each count through a fresh gateway, held twice:"
  echo "on a fresh heap, then again on the memory the first hold used and gave back (warm)."
  echo
  echo "| streams open | gateway RSS idle -> open | file descriptors idle -> open | per open stream, fresh | warm: RSS idle -> open | per open stream, warm |"
  echo "|---:|---:|---:|---:|---:|---:|"
  awk '{ printf "| %d | %.1f MiB -> %.1f MiB | %d -> %d (%.2f per stream) | %.1f KiB | %.1f MiB -> %.1f MiB | %.1f KiB |\n", $1, $2/1024, $3/1024, $4, $5, ($5-$4)/$1, ($3-$2)/$1, $6/1024, $7/1024, ($7-$6)/$1 }' "$W/sse-memory"
  awk '{ n++; x+=$1; y+=$3-$2; w+=$7-$6; xx+=$1*$1; xy+=$1*($3-$2); xw+=$1*($7-$6) } END { if (n > 1) printf "\nSlope (least squares over the counts): %.1f KiB per additional open stream (fresh), %.1f KiB (warm).\n", (n*xy-x*y)/(n*xx-x*x), (n*xw-x*w)/(n*xx-x*x) }' "$W/sse-memory"
  echo
  echo "| measure | value |"
  echo "|---|---:|"
  echo "| through the gateway ($STREAMS) | $g |"
  echo "| direct to the agent | $d |"
  awk -v g="$g50" -v d="$d50" 'BEGIN { printf "| added delay per event, median | %.3f ms |\n", (g-d)/1000 }'
  awk -v g="$g99" -v d="$d99" 'BEGIN { printf "| added delay per event, p99 | %.3f ms |\n", (g-d)/1000 }'
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 1; PIDS=()
}

# overload_case NAME KEYS: a fresh all-on gateway in front of the capacity agent with
# KEYS in its upstream; open-loop load at OVERLOAD_FACTOR x the agent's capacity for
# OVERLOAD_SECONDS while the gateway's RSS is sampled every second; appends a table row
# to $W/overload.
overload_case() {
  local name=$1 keys=$2 agent=127.0.0.1:18212
  UPSTREAM_KEYS="$keys" start_agentgate 18213 19213 1 on "$agent"
  local gw; gw=$(pid_on_port 18213)
  curl -s "http://$agent/stats" >/dev/null   # the agent's peak starts afresh
  local before; before=$(rss_kb "$gw")
  local rate=$(( OVERLOAD_CAPACITY * OVERLOAD_FACTOR ))
  $LOAD_CPU "$EX/fixed_rate" "http://127.0.0.1:18213/v1/conversations" "$rate" "$OVERLOAD_SECONDS" "$OVERLOAD_CONNS" > "$W/overload-$name.txt" &
  local load=$! peak=$before r
  while kill -0 "$load" 2>/dev/null; do
    r=$(rss_kb "$gw"); [ "$r" -gt "$peak" ] && peak=$r
    sleep 1
  done
  wait "$load" || true
  local after; after=$(rss_kb "$gw")
  local stats; stats=$(curl -s "http://$agent/stats")
  local fr; fr=$(cat "$W/overload-$name.txt")
  echo "  $name: $fr agent=$stats rss=${before}->${peak}->${after} KiB" >&2
  field() { echo "$fr" | sed "s/.* $1=\([0-9]*\).*/\1/"; }
  local sent refused p50 p99 rp99 errors connects elapsed agent_peak
  sent=$(echo "$fr" | sed 's/^sent=\([0-9]*\).*/\1/')
  errors=$(field errors); refused=$(field refused); p50=$(field p50_us); p99=$(field p99_us)
  rp99=$(field refused_p99_us); connects=$(field connects); elapsed=$(field elapsed_ms)
  agent_peak=$(echo "$stats" | sed 's/.*"peak_in_flight":\([0-9]*\).*/\1/')
  # Rates over the time the load took: without protection the last requests are
  # answered long after the last was due.
  awk -v n="$name" -v s="$sent" -v r="$refused" -v e="$errors" -v ms="$elapsed" -v p50="$p50" -v p99="$p99" \
      -v rp99="$rp99" -v c="$connects" -v ap="$agent_peak" -v b="$before" -v pk="$peak" -v a="$after" -v o="$rate" \
    'BEGIN { t = ms / 1000; printf "| %s | %d | %.0f s | %.0f | %.0f | %d | %.1f / %.1f ms | %.1f ms | %d | %d | %.1f -> %.1f -> %.1f MiB |\n", n, o, t, (s-r)/t, r/t, e, p50/1000, p99/1000, rp99/1000, c, ap, b/1024, pk/1024, a/1024 }' >> "$W/overload"
  kill -INT "$gw" 2>/dev/null || true
  local i
  for i in $(seq 1 100); do [ -z "$(ss -ltnH "sport = :18213")" ] && break; sleep 0.05; done
}

run_overload() {
  local workers=8 service_ms=40
  OVERLOAD_CAPACITY=$(( workers * 1000 / service_ms ))
  OVERLOAD_FACTOR=${OVERLOAD_FACTOR:-3}
  OVERLOAD_SECONDS=${OVERLOAD_SECONDS:-30}
  OVERLOAD_CONNS=${OVERLOAD_CONNS:-200}
  start_span_sink
  $LOAD_CPU "$EX/capacity_agent" 127.0.0.1:18212 "$workers" "$service_ms" &
  local capacity=$!
  PIDS+=($capacity)
  wait_port 18212
  rm -f "$W/overload"
  echo "overload: an agent serving $workers at a time for ${service_ms} ms ($OVERLOAD_CAPACITY req/s), offered ${OVERLOAD_FACTOR}x for ${OVERLOAD_SECONDS}s..." >&2
  overload_case "none" ""
  overload_case "max_in_flight = $workers, queue_timeout = 50ms" "max_in_flight = $workers
queue_timeout = \"50ms\""
  overload_case "max_in_flight = $((workers * 4)), no queue" "max_in_flight = $((workers * 4))"
  overload_case "adaptive_concurrency, min 4, max 64" "[upstreams.agents.adaptive_concurrency]
min_limit = 4
max_limit = 64"
  echo
  echo "### Overload: offered ${OVERLOAD_FACTOR}x what the agent can serve ($(machine))"
  echo
  echo "An agent that serves $workers requests at a time for ${service_ms} ms each ($OVERLOAD_CAPACITY req/s; the rest wait inside it),"
  echo "open-loop load at $(( OVERLOAD_CAPACITY * OVERLOAD_FACTOR )) req/s for ${OVERLOAD_SECONDS} s over $OVERLOAD_CONNS connections (latency from each request's"
  echo "scheduled start), gateway with everything on, 1 thread."
  echo
  echo "| protection | offered req/s | load took | served req/s | refused (503) req/s | failed | admitted p50 / p99 | refusal p99 | connections opened | agent's peak in flight | gateway RSS before -> peak -> after |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  cat "$W/overload"
  # The capacity agent has no SIGINT handler, and a background job ignores SIGINT.
  kill -TERM "$capacity" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 1; PIDS=()
}

# soak_config FILE DEFAULT_LIMIT: the soak's gateway config (three demo agents; the
# reload every minute flips the list route's default_limit between 20 and 21).
soak_config() {
  cat > "$1" <<TOML
[server]
listen = "127.0.0.1:18214"
admin_listen = "127.0.0.1:19214"
threads = 2
grace_period = "0s"
watch_config = false
[log]
level = "warn"
access_log = "$W/soak-access.log"
[trace]
otlp_endpoint = "http://$SINK/v1/traces"
sample_ratio = 1.0
[upstreams.agents]
backends = ["127.0.0.1:18215", "127.0.0.1:18216", "127.0.0.1:18217"]
[upstreams.agents.health]
interval = "1s"
[[routes]]
name = "chat"
path_prefix = "/v1/chat"
upstream = "agents"
[routes.ai]
api = "openai"
models = ["demo-mini"]
[routes.rate_limit]
key = "global"
requests_per_second = 12.0
burst = 12
[routes.token_limit]
key = "global"
tokens_per_minute = 120000
burst = 4000
[[routes]]
name = "conversations"
path_prefix = "/v1/conversations"
upstream = "agents"
[routes.rate_limit]
key = "client_ip"
requests_per_second = 100000.0
burst = 100000
[routes.pagination]
methods = ["GET"]
default_limit = $2
max_limit = 100
[[alerts]]
name = "Errors"
signal = "error_ratio"
above = 0.5
window = "1m"
TOML
}

soak_agent() { # N: demo agent N (1-3) on 18214+N
  "$BIN" demo-agent --listen "127.0.0.1:$((18214 + $1))" --name "soak-agent-$1" --token-delay 100ms --first-token-delay 0ms >/dev/null 2>&1 &
  echo $!
}

# soak: SOAK_MINUTES (30) of mixed traffic through an all-on gateway (2 threads) in front
# of three demo agents: plain messages, paginated lists, SSE streams, LLM calls against
# a token budget they overdraw; a reload every minute; agent 3 killed (SIGKILL) at
# every odd minute and started again a minute later; the gateway's RSS every 10 s.
run_soak() {
  local minutes=${SOAK_MINUTES:-30}
  local seconds=$(( minutes * 60 ))
  local cfg="$W/soak.toml"
  start_span_sink
  local a1 a2 a3
  a1=$(soak_agent 1); a2=$(soak_agent 2); a3=$(soak_agent 3)
  PIDS+=("$a1" "$a2")
  wait_port 18215; wait_port 18216; wait_port 18217
  soak_config "$cfg" 20
  "$BIN" run --config "$cfg" >/dev/null 2>"$W/soak-gateway.err" &
  PIDS+=($!)
  wait_port 18214
  local gw; gw=$(pid_on_port 18214)
  echo "soak: $minutes min of mixed traffic, a reload every minute, agent 3 down every other minute..." >&2
  local t0; t0=$(date +%s)
  "$EX/soak" http://127.0.0.1:18214 "$seconds" 50 50 50 20 10 > "$W/soak.out" &
  local load=$!
  : > "$W/soak-rss"; : > "$W/soak-kills"
  local reloads_ok=0 reloads_failed=0 limit=20 t next_sample=0 next_minute=60 answer
  while kill -0 "$load" 2>/dev/null; do
    t=$(( $(date +%s) - t0 ))
    if [ "$t" -ge "$next_sample" ]; then
      echo "$t $(rss_kb "$gw")" >> "$W/soak-rss"
      next_sample=$(( next_sample + 10 ))
    fi
    if [ "$t" -ge "$next_minute" ] && [ "$t" -lt "$seconds" ]; then
      limit=$(( limit == 20 ? 21 : 20 ))
      soak_config "$cfg" "$limit"
      answer=$(curl -s -X POST "http://127.0.0.1:19214/reload")
      if echo "$answer" | grep -q '"result":"success"'; then reloads_ok=$((reloads_ok + 1)); else reloads_failed=$((reloads_failed + 1)); echo "  reload at ${t}s: $answer" >&2; fi
      if [ $(( (next_minute / 60) % 2 )) -eq 1 ]; then
        kill -9 "$a3" 2>/dev/null || true
        echo "$(date +%s%3N)" >> "$W/soak-kills"
      else
        a3=$(soak_agent 3)
      fi
      next_minute=$(( next_minute + 60 ))
    fi
    sleep 0.5
  done
  wait "$load" || true
  kill -9 "$a3" 2>/dev/null || true
  echo "$(( $(date +%s) - t0 )) $(rss_kb "$gw")" >> "$W/soak-rss"
  local total; total=$(grep '^total' "$W/soak.out" || echo "total (none: the load generator did not finish)")
  echo "  $total; reloads ${reloads_ok} ok, ${reloads_failed} failed" >&2
  # A failure from 1 s before a kill's stamp (taken once the kill returned) to 3 s after
  # it is one the kill explains: the killed agent's requests and streams in flight.
  awk 'NR==FNR { k[NR]=$1; n=NR; next } /^failure/ { split($2, a, "="); e=0; for (i = 1; i <= n; i++) if (a[2] >= k[i] - 1000 && a[2] <= k[i] + 3000) { e=1; break } print (e ? "explained" : "unexplained"), $0 }' "$W/soak-kills" "$W/soak.out" > "$W/soak-failures"
  local explained unexplained
  explained=$(grep -c '^explained' "$W/soak-failures" || true)
  unexplained=$(grep -c '^unexplained' "$W/soak-failures" || true)
  mkdir -p target/bench
  cp "$W/soak.out" "$W/soak-rss" "$W/soak-kills" "$W/soak-failures" target/bench/
  echo "  the load generator's output, the RSS samples, the kills and the failures are kept in target/bench/" >&2
  grep '^unexplained' "$W/soak-failures" | head -20 >&2 || true
  echo
  echo "### Soak: $minutes minutes of mixed traffic ($(machine))"
  echo
  echo "Gateway with everything on, 2 threads, three demo agents; per second: 50 plain messages, 50 paginated"
  echo "lists (clamped), 50 SSE streams of 10 events 100 ms apart, 20 LLM calls on a route limited to 12 a"
  echo "second and a token budget (429 expected); a reload every minute (${reloads_ok} ok, ${reloads_failed} failed);"
  echo "agent 3 killed with SIGKILL every other minute and started a minute later ($(wc -l < "$W/soak-kills") kills)."
  echo
  echo "Requests (answered / refused as expected / failed): ${total#total }."
  echo "Failures from 1 s before to 3 s after a kill (the killed agent's requests in flight): $explained; others: $unexplained."
  if [ "$unexplained" -gt 0 ]; then
    echo
    echo "The others, by kind and answer:"
    echo
    grep '^unexplained' "$W/soak-failures" | sed 's/.* kind=\([a-z]*\) what=\(.\{0,60\}\).*/- \1: \2/' | sort | uniq -c | sort -rn | head -10
  fi
  echo
  echo "| minute | gateway RSS |"
  echo "|---:|---:|"
  awk '$1 % 120 < 10 || NR == 1 { printf "| %.0f | %.1f MiB |\n", $1 / 60, $2 / 1024 }' "$W/soak-rss" | awk '!seen[$2]++'
  tail -1 "$W/soak-rss" | awk '{ printf "| %.1f (end) | %.1f MiB |\n", $1 / 60, $2 / 1024 }'
  # After a warm-up of 2 minutes (or a fifth of a short run): the range, and the slope by
  # least squares.
  awk -v w=$(( seconds / 5 < 120 ? seconds / 5 : 120 )) '$1 >= w { n++; x+=$1; y+=$2; xx+=$1*$1; xy+=$1*$2; if (min == "" || $2 < min) min=$2; if ($2 > max) max=$2 }
    END { if (n > 1) printf "\nAfter warm-up (%d s, %d samples): RSS %.1f-%.1f MiB, slope %.2f MiB per hour (least squares).\n", w, n, min/1024, max/1024, (n*xy-x*y)/(n*xx-x*x)*3600/1024 }' "$W/soak-rss"
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 1; PIDS=()
}

# idle_memory NAME PORT PID: holds IDLE_CONNS keep-alive connections on PORT (one request
# each) and appends "name idle_kib held_kib after_kib" to $W/idle: the process's RSS
# before, while they are held, and 5 s after they closed.
idle_memory() {
  local name=$1 port=$2 pid=$3
  local before; before=$(rss_kb "$pid")
  local fifo="$W/idle-$name.out"
  "$EX/idle_hold" "127.0.0.1:$port" "$IDLE_CONNS" 3 2000 > "$fifo" &
  local hold=$!
  local i
  for i in $(seq 1 600); do grep -q '^opened=' "$fifo" && break; sleep 0.1; done
  sleep 1
  local held; held=$(rss_kb "$pid")
  wait "$hold"
  sleep 5
  local after; after=$(rss_kb "$pid")
  echo "  $name: $(head -1 "$fifo"), RSS ${before} -> ${held} -> ${after} KiB" >&2
  echo "$name $before $held $after" >> "$W/idle"
}

run_idle() {
  local fd_limit; fd_limit=$(ulimit -n)
  if [ $(( IDLE_CONNS + 1000 )) -gt "$fd_limit" ]; then
    IDLE_CONNS=$(( fd_limit - 1000 ))
    echo "open-file limit is $fd_limit; holding $IDLE_CONNS connections" >&2
  fi
  : > "$W/idle"
  start_backend
  "$EX/bare_pingora" 127.0.0.1:18003 "$BACKEND" 1 >/dev/null 2>&1 &
  PIDS+=($!)
  wait_port 18003
  idle_memory bare-pingora 18003 "$(pid_on_port 18003)"
  start_agentgate 18005 19005 1 on
  sleep 1
  idle_memory agentgate-on 18005 "$(pid_on_port 18005)"
  echo
  echo "### $IDLE_CONNS idle keep-alive connections ($(machine))"
  echo
  echo "One request on each connection, then held idle for 3 s and closed; RSS sampled before, while held, and 5 s after the close."
  echo
  echo "| system | RSS before | RSS held | per connection | RSS 5 s after close | given back |"
  echo "|---|---:|---:|---:|---:|---:|"
  local name b h a
  while read -r name b h a; do
    awk -v n="$name" -v b="$b" -v h="$h" -v a="$a" -v c="$IDLE_CONNS" 'BEGIN {
      back = (h > b) ? 100 * (h - a) / (h - b) : 100
      printf "| %s | %.1f MiB | %.1f MiB | %.1f KiB | %.1f MiB | %.0f%% |\n", n, b/1024, h/1024, (h-b)/c, a/1024, back }'
  done < "$W/idle"
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 1; PIDS=()
}

# cost_of NAME PORT CMD...: runs CMD under callgrind, counts instructions only while wrk
# drives PORT, and appends "name instructions_per_request" to $W/cost. Instruction counts
# repeat to within a percent from run to run, where rates on a shared machine move by
# a third: the way to see a change in per-request cost. User space only (the kernel's
# share shows in the CPU per request of `main`).
cost_of() {
  local name=$1 port=$2; shift 2
  local out="$W/callgrind.$name"
  $PROXY_CPU valgrind --tool=callgrind --callgrind-out-file="$out" --instr-atstart=no "$@" >/dev/null 2>"$W/valgrind-$name.err" &
  local pid=$!
  # Slow to start under callgrind.
  wait_port "$port" 60
  local i
  $LOAD_CPU wrk -t1 -c10 -d3s "http://127.0.0.1:$port/v1/conversations" >/dev/null 2>&1
  callgrind_control -i on "$pid" >/dev/null
  local n; n=$($LOAD_CPU wrk -t1 -c10 -d"${COST_SECONDS}s" "http://127.0.0.1:$port/v1/conversations" | awk '/requests in/ {print $1}')
  callgrind_control -i off "$pid" >/dev/null
  kill -INT "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local total; total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  echo "  $name: $n requests, $total instructions" >&2
  echo "$name $(awk -v t="$total" -v n="$n" 'BEGIN { if (n > 0) printf "%.0f", t / n; else print "nan" }')" >> "$W/cost"
}

run_cost() {
  command -v valgrind >/dev/null || { echo "missing valgrind: run scripts/deps.sh bench (as root) first" >&2; exit 1; }
  : > "$W/cost"
  start_backend
  cost_of bare-pingora 18003 "$EX/bare_pingora" 127.0.0.1:18003 "$BACKEND" 1
  cost_of agentgate-off 18004 "$BIN" run --config "$(agentgate_config 18004 19004 1 off)"
  cost_of agentgate-on 18005 "$BIN" run --config "$(agentgate_config 18005 19005 1 on)"
  local bare; bare=$(awk '$1 == "bare-pingora" {print $2}' "$W/cost")
  echo
  echo "### Instructions per request ($(machine))"
  echo
  echo "callgrind, user space, one worker, wrk -t1 -c10 for ${COST_SECONDS}s after a 3 s warm-up."
  echo
  echo "| system | instructions/request | bare pingora / system |"
  echo "|---|---:|---:|"
  local name n
  while read -r name n; do
    echo "| $name | $n | $(awk -v b="$bare" -v n="$n" 'BEGIN { printf "%.2f", b / n }') |"
  done < "$W/cost"
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 1; PIDS=()
}

# ai_config PORT ADMIN KIND(plain|ai) AGENT: one route to the agent's chat completions,
# with [routes.ai] or without; access log and spans off, so the difference is the
# reading of the stream alone.
ai_config() {
  local f="$W/agentgate-ai-$3.toml"
  cat > "$f" <<CFG
[server]
listen = "127.0.0.1:$1"
admin_listen = "127.0.0.1:$2"
threads = 1
grace_period = "0s"
[log]
level = "warn"
access_log = "off"
[trace]
sample_ratio = 0.0
[upstreams.llm]
backends = ["$4"]
[upstreams.llm.health]
interval = "5s"
[[routes]]
name = "chat"
path_prefix = "/v1/chat"
upstream = "llm"
CFG
  if [ "$3" = ai ]; then printf '[routes.ai]\napi = "openai"\nmodels = ["bench-mini"]\n' >> "$f"; fi
  echo "$f"
}

# ai_streams PORT N PARALLEL: N streams of 1,000 events, PARALLEL at a time.
ai_streams() {
  local body='{"model":"bench-mini","stream":true,"stream_options":{"include_usage":true},"max_tokens":1000,"messages":[{"role":"user","content":"count to a thousand"}]}'
  seq 1 "$2" | $LOAD_CPU xargs -P "$3" -I{} curl -sfN -o /dev/null --max-time 120 \
    -d "$body" "http://127.0.0.1:$1/v1/chat/completions?tokens=1000"
}

# On-CPU nanoseconds of every thread of a process (user + kernel), from schedstat.
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {print s + 0}'; }

run_ai() {
  local agent=127.0.0.1:18210 n="${AI_STREAMS:-10}" kind
  # 2 ms between events: even under callgrind the gateway reads each event on its own,
  # as it does at full speed (coalesced events would flatter the plain route).
  $LOAD_CPU "$BIN" demo-agent --listen "$agent" --name bench-llm --token-delay 2ms --first-token-delay 0ms >/dev/null 2>&1 &
  PIDS+=($!)
  wait_port 18210
  : > "$W/ai"
  for kind in plain ai; do
    local cfg; cfg=$(ai_config 18211 19211 "$kind" "$agent")
    $PROXY_CPU "$BIN" run --config "$cfg" >/dev/null 2>"$W/agentgate-ai.err" &
    local pid=$!
    wait_port 18211
    ai_streams 18211 2 2
    local before; before=$(cpu_ns "$pid")
    ai_streams 18211 "$n" 2
    local after; after=$(cpu_ns "$pid")
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
    local out="$W/callgrind.ai-$kind"
    $PROXY_CPU valgrind --tool=callgrind --callgrind-out-file="$out" --instr-atstart=no "$BIN" run --config "$cfg" >/dev/null 2>"$W/valgrind-ai-$kind.err" &
    pid=$!
    wait_port 18211 60
    ai_streams 18211 2 2
    callgrind_control -i on "$pid" >/dev/null
    ai_streams 18211 "$n" 2
    callgrind_control -i off "$pid" >/dev/null
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local instr; instr=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    echo "$kind $(( instr / (n * 1000) )) $(( (after - before) / (n * 1000) ))" >> "$W/ai"
    echo "  $kind: $instr instructions, $(( after - before )) ns CPU for $n streams" >&2
  done
  echo
  echo "### An SSE stream of 1,000 events through an AI route ($(machine))"
  echo
  echo "Demo agent (OpenAI chunks, ~190 bytes each, 2 ms apart, final usage chunk), $n streams two at a time, one worker; access log and spans off in both."
  echo
  echo "| route | instructions/event | CPU ns/event (user + kernel) |"
  echo "|---|---:|---:|"
  awk '{ printf "| %s | %d | %d |\n", ($1 == "ai" ? "with [routes.ai]" : "plain"), $2, $3 }' "$W/ai"
  awk '$1 == "plain" { pi = $2; pc = $3 } $1 == "ai" { ai = $2; ac = $3 }
       END { printf "| added by [routes.ai] | %+.1f%% | %+.1f%% |\n", (ai - pi) * 100 / pi, (ac - pc) * 100 / pc }' "$W/ai"
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 1; PIDS=()
}

case "$MODE" in
  main) run_main ;;
  ai) run_ai ;;
  scale) run_scale ;;
  sse) run_sse ;;
  idle) run_idle ;;
  cost) run_cost ;;
  overload) run_overload ;;
  soak) run_soak ;;
  all) run_main; run_cost; run_scale; run_sse; run_idle; run_ai; run_overload ;;
  *) echo "usage: $0 [main|cost|scale|sse|idle|ai|overload|soak|all]" >&2; exit 2 ;;
esac
