#!/usr/bin/env bash
# Proxy figures for docs/benchmarks.md: requests per second, p50/p99 latency and proxy CPU
# time per request, for `tether up`, HAProxy and NGINX (Debian packages) in the same run, each
# with consistent hashing keyed on the x-user header (10,000 distinct keys) over four
# upstreams, upstream keep-alive, X-Forwarded-For added, one worker thread each. The upstream
# is one NGINX worker answering a 100-byte body and `X-Upstream: bN` from memory; wrk runs one
# thread. Before the timed rounds, bench/sticky.py checks that every proxy is sticky (each key
# on one upstream, every time).
#
# Then, per proxy, memory per idle keep-alive client connection: resident memory of all its
# processes before and while bench/hold.py holds IDLE connections (one request each, then
# silence; default 4,000), over the connections held.
#
# Usage: bench/proxy.sh [RUNS] [SECONDS] [CONNECTIONS]   (defaults 3, 10, 32; IDLE=N)
# TETHER_BASELINE=PATH adds a `baseline` row: that tether binary, in the same rounds (A/B).
# Needs: wrk haproxy nginx (apt-get install wrk haproxy nginx-light). Loopback only; bounded
# by RUNS x 3 proxies x SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
secs=${2:-10}
conns=${3:-32}
. bench/upstream-env.sh
need wrk haproxy nginx
cargo build --release --locked -q --bin tether
start_upstream 19101 19102 19103 19104

proxies="tether haproxy nginx"
if [ -n "${TETHER_BASELINE:-}" ]; then
  # An A/B row: another tether build (e.g. the commit before a change) in the same rounds.
  TETHER_BIN=$TETHER_BASELINE start_tether 18083 17072 17073 19101 19102 19103 19104
  baseline_pid=$tether_pid
  proxies="tether baseline haproxy nginx"
fi
start_tether 18080 17070 17071 19101 19102 19103 19104
start_haproxy 18081 19101 19102 19103 19104
start_nginx 18082 19101 19102 19103 19104

cat >"$work/keys.lua" <<'EOF'
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/", { ["x-user"] = "user-" .. (i % 10000) })
end
EOF

for proxy in $proxies; do
  case $proxy in tether) port=18080 ;; haproxy) port=18081 ;; nginx) port=18082 ;; baseline) port=18083 ;; esac
  for _ in $(seq 100); do curl -sf -H 'x-user: warm' "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
done
# Every proxy must be sticky (one upstream per key, the same every time) before it is timed.
for proxy in $proxies; do
  case $proxy in tether) port=18080 ;; haproxy) port=18081 ;; nginx) port=18082 ;; baseline) port=18083 ;; esac
  printf '%-8s sticky: %s\n' "$proxy" "$(python3 bench/sticky.py "127.0.0.1:$port")"
done
hz=$(getconf CLK_TCK)
printf '%-8s %4s %10s %9s %9s %12s\n' proxy run req/s p50 p99 "cpu µs/req"
for run in $(seq "$runs"); do
  for proxy in $proxies; do
    case $proxy in tether) port=18080 ;; haproxy) port=18081 ;; nginx) port=18082 ;; baseline) port=18083 ;; esac
    wrk -t1 -c"$conns" -d2s -s "$work/keys.lua" "http://127.0.0.1:$port/" >/dev/null  # warm-up
    before=$(ticks $proxy)
    out=$(wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$work/keys.lua" "http://127.0.0.1:$port/")
    after=$(ticks $proxy)
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
    cpu=$(python3 -c "print(f'{($after - $before) / $hz / $reqs * 1e6:.2f}')")
    printf '%-8s %4s %10s %9s %9s %12s %s\n' "$proxy" "$run" "$rps" "$p50" "$p99" "$cpu" "$errs"
  done
done
idle=${IDLE:-4000}
printf '\n%-8s %12s %12s %8s %12s\n' proxy "RSS KiB" "held KiB" held "KiB/conn"
for proxy in $proxies; do
  case $proxy in tether) port=18080 ;; haproxy) port=18081 ;; nginx) port=18082 ;; baseline) port=18083 ;; esac
  sleep 2   # the benchmark's connections are gone
  before=$(rss_kib $proxy)
  python3 bench/hold.py "127.0.0.1:$port" 0 "$idle" 20 >"$work/idle-$proxy.out" & hold=$!
  sleep 15  # the holder opens its connections and goes quiet
  during=$(rss_kib $proxy)
  wait "$hold" || true
  held=$(awk '/^held/ {print $2}' "$work/idle-$proxy.out")
  per=$(awk -v a="$before" -v b="$during" -v n="$held" 'BEGIN { printf "%.1f", n ? (b - a) / n : 0 }')
  printf '%-8s %12s %12s %8s %12s\n' "$proxy" "$before" "$during" "$held" "$per"
done
