#!/usr/bin/env bash
# The edge under attack, for docs/benchmarks.md: `tether up`, HAProxy and NGINX (one proxy
# thread each, the same client timeouts: head 10 s, keep-alive 60 s; bench/upstream-env.sh) in
# front of one NGINX upstream. For each proxy in turn, wrk (one thread, 32 connections,
# SECONDS) measures req/s on the unloaded proxy, then again while bench/hold.py holds 2,000
# slowloris sockets (re-opened as the proxy closes them) and 5,000 idle keep-alive connections
# against it; prints both, the ratio (Tether's target ≥ 90%), the proxy's CPU per request and
# its resident memory before and while holding them.
# Each proxy is measured RUNS times (a fresh holder each time), the proxies in turn; the last
# lines give each proxy's median ratio.
# Usage: bench/edge.sh [SECONDS] [RUNS]      (defaults 10, 3)
# Needs: wrk, haproxy, nginx, python3. Loopback only; bounded by RUNS x 3 x (2 SECONDS + 27 s).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
runs=${2:-3}
. bench/upstream-env.sh
need wrk haproxy nginx python3
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --locked -q --bin tether
start_upstream 19111
start_tether 18180 17170 17171 19111
start_haproxy 18181 19111
start_nginx 18182 19111
for port in 18180 18181 18182; do
  for _ in $(seq 100); do curl -sf -H 'x-user: warm' "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
done
hz=$(getconf CLK_TCK)
# wrk's req/s against PORT, and proxy NAME's CPU time per request over that run ("RPS CPU_US").
rps() {
  local t0 t1 out
  t0=$(ticks "$1")
  out=$(wrk -t1 -c32 -d"${secs}s" -H 'x-user: u1' "http://127.0.0.1:$2/")
  t1=$(ticks "$1")
  echo "$out" | awk -v t0="$t0" -v t1="$t1" -v s="$secs" -v hz="$hz" \
    '/Requests\/sec/ { printf "%s %.2f", $2, (t1 - t0) * 1e6 / hz / ($2 * s) }'
}
printf '%-8s %10s %10s %7s %11s %11s %10s %10s\n' proxy "req/s" "attacked" ratio "µs/req" "attacked" "RSS MiB" "attacked"
for run in $(seq "$runs"); do
  for proxy in tether haproxy nginx; do
    case $proxy in tether) port=18180 ;; haproxy) port=18181 ;; nginx) port=18182 ;; esac
    wrk -t1 -c32 -d2s -H 'x-user: u1' "http://127.0.0.1:$port/" >/dev/null  # warm-up
    rss_idle=$(rss_kib $proxy)
    read -r base base_cpu <<<"$(rps $proxy $port)"
    python3 bench/hold.py "127.0.0.1:$port" 2000 5000 $((secs + 15)) > "$work/hold-$proxy.out" & hold=$!
    sleep 10   # the holder opens its connections
    rss_held=$(rss_kib $proxy)
    read -r loaded loaded_cpu <<<"$(rps $proxy $port)"
    wait "$hold" || true
    ratio=$(awk -v a="$base" -v b="$loaded" 'BEGIN { printf "%.1f", 100 * b / a }')
    echo "$ratio" >>"$work/ratios-$proxy"
    printf '%-8s %10s %10s %7s %11s %11s %10s %10s\n' "$proxy" "$base" "$loaded" "$ratio%" \
      "$base_cpu" "$loaded_cpu" "$((rss_idle / 1024))" "$((rss_held / 1024))"
    echo "  $proxy: $(cat "$work/hold-$proxy.out")"
    sleep 2   # the held connections close
  done
done
for proxy in tether haproxy nginx; do
  echo "$proxy: median ratio $(sort -n "$work/ratios-$proxy" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] "%" }') over $runs runs"
done
