#!/usr/bin/env bash
# Idle cost of replicated ranges: starts 3 nodes, makes new tables' ranges Raft groups of 3
# replicas (`num_replicas = 3`), creates tables until about RANGES ranges exist, waits until the
# cluster is idle, then samples each node's CPU time (utime + stime from /proc/<pid>/stat) over
# SAMPLE_S seconds and prints it as % of one core per node. CPU time per process, not wall-clock
# load, is what it compares, so builds running beside it add little noise (cache and scheduler
# effects only; repeat a run to see the spread).
#
#   scripts/idle_cpu.sh [--release|--debug] [--bin PATH] [--ranges N] [--settle-s S]
#                       [--sample-s S] [--port-base P] [--keep]
#
# Defaults: the release binary (`cargo build --release -p ldr-cli` first), 200 ranges,
# 20 s settle, 30 s sample, ports 36257.. (SQL/gRPC) and 38080.. (HTTP). Every node process it
# starts is killed when it exits; --keep keeps the stores (in the printed directory).
# Target (issue 10): each node under 5 % of a core with 200 idle RF3 ranges.
set -euo pipefail

target_dir="${CARGO_TARGET_DIR:-/var/tmp/ldr-target}"
bin="$target_dir/release/ldr"
ranges=200
settle_s=20
sample_s=30
port_base=36257
http_base=38080
keep=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --release) bin="$target_dir/release/ldr" ;;
    --debug) bin="$target_dir/debug/ldr" ;;
    --bin) bin="$2"; shift ;;
    --ranges) ranges="$2"; shift ;;
    --settle-s) settle_s="$2"; shift ;;
    --sample-s) sample_s="$2"; shift ;;
    --port-base) port_base="$2"; http_base=$((port_base + 1823)); shift ;;
    --keep) keep=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[[ -x "$bin" ]] || { echo "no ldr binary at $bin (build it first)" >&2; exit 1; }

work="$(mktemp -d /tmp/ldr-idle-cpu.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [[ $keep == 1 ]]; then echo "stores kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

join="127.0.0.1:$port_base,127.0.0.1:$((port_base + 1)),127.0.0.1:$((port_base + 2))"
host="127.0.0.1:$port_base"
sql() { "$bin" sql --insecure --host="$host" --format=csv "$@"; }
# A statement that a lease move or a starting node refuses is retried (bounded).
sql_retry() {
  local attempt
  for attempt in $(seq 1 20); do
    if out="$(sql "$@" 2>&1)"; then printf '%s\n' "$out"; return 0; fi
    sleep 0.5
  done
  echo "gave up after 20 attempts: $out" >&2
  return 1
}

for port in $port_base $((port_base + 1)) $((port_base + 2)) $http_base $((http_base + 1)) $((http_base + 2)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use (another run? pick --port-base)" >&2; exit 1
  fi
done
for i in 0 1 2; do
  out="$("$bin" start --insecure --store="$work/n$i" --listen-addr="127.0.0.1:$((port_base + i))" \
    --http-addr="127.0.0.1:$((http_base + i))" --join="$join" --background 2>&1)"
  pid="$(grep -o 'pid [0-9]*' <<<"$out" | head -1 | cut -d' ' -f2)"
  [[ -n "$pid" ]] || { echo "node $i did not start: $out" >&2; exit 1; }
  pids+=("$pid")
done
"$bin" init --insecure --host="$host" >/dev/null
echo "binary $bin; nodes ${pids[*]}; stores in $work"

sql_retry -e "ALTER RANGE default CONFIGURE ZONE USING num_replicas = 3" >/dev/null
count=0
tables=0
# Each table has several shards (ranges); stop at the first table that reaches the target.
while (( count < ranges )); do
  tables=$((tables + 1))
  sql_retry -e "CREATE TABLE IF NOT EXISTS idle_$tables (k INT8 PRIMARY KEY, v STRING)" >/dev/null
  n="$(sql_retry -e "SHOW RANGES FROM TABLE idle_$tables" | tail -n +2 | grep -c . || true)"
  count=$((count + n))
  (( tables < 1000 )) || { echo "no ranges are being created" >&2; exit 1; }
done
echo "$tables tables, $count replicated ranges (replication factor 3)"

# Idle: the reconcile loops create every replica and leases settle.
sleep "$settle_s"

ticks() { awk '{ s = $0; sub(/.*\) /, "", s); split(s, f, " "); print f[12] + f[13] }' "/proc/$1/stat"; }
hz="$(getconf CLK_TCK)"
declare -a before
for i in 0 1 2; do before[i]="$(ticks "${pids[i]}")"; done
start_ns="$(date +%s%N)"
sleep "$sample_s"
elapsed_ns=$(( $(date +%s%N) - start_ns ))
total=0
for i in 0 1 2; do
  used=$(( $(ticks "${pids[i]}") - before[i] ))
  pct="$(awk -v t="$used" -v hz="$hz" -v ns="$elapsed_ns" 'BEGIN { printf "%.1f", 100 * t / hz / (ns / 1e9) }')"
  echo "node $((i + 1)) (pid ${pids[i]}): $pct % of a core"
  total=$((total + used))
done
awk -v t="$total" -v hz="$hz" -v ns="$elapsed_ns" -v r="$count" \
  'BEGIN { printf "mean %.1f %% of a core per node over %.0f s, %d ranges\n", 100 * t / hz / (ns / 1e9) / 3, ns / 1e9, r }'
