#!/usr/bin/env bash
# Large responses, for docs/benchmarks.md (issue 18's third target): a 1 MiB response streamed
# through `tether up`, HAProxy and NGINX (the set-up of bench/proxy.sh: one proxy thread each,
# consistent hashing on x-user, upstream keep-alive; every proxy with its default buffering)
# from one NGINX upstream serving a 1 MiB file. wrk (one thread, CONNECTIONS connections,
# SECONDS, keys spread over the upstreams) measures MiB/s and the proxy's CPU per MiB; the
# proxy's resident memory is read before and during the run (growth over the connections:
# memory per 1 MiB response in flight).
#
# Usage: bench/large.sh [RUNS] [SECONDS] [CONNECTIONS]   (defaults 3, 10, 8)
# Needs: wrk haproxy nginx. Loopback only; bounded by RUNS x 3 proxies x SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
secs=${2:-10}
conns=${3:-8}
. bench/upstream-env.sh
need wrk haproxy nginx
cargo build --release --locked -q --bin tether
mkdir -p "$work/www"
head -c 1048576 /dev/urandom >"$work/www/big"
# NGINX's workers (an unprivileged user when started as root) must be able to read it.
chmod 755 "$work" "$work/www" && chmod 644 "$work/www/big"
servers=""
for port in 19121 19122 19123 19124; do
  servers+="  server { listen 127.0.0.1:$port; root $work/www; }"$'\n'
done
run_nginx files 4096 "" "  keepalive_requests 1000000;
  sendfile on;
$servers"
start_tether 18280 17270 17271 19121 19122 19123 19124
start_haproxy 18281 19121 19122 19123 19124
start_nginx 18282 19121 19122 19123 19124
cat >"$work/keys.lua" <<'LUA'
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/big", { ["x-user"] = "user-" .. (i % 100) })
end
LUA
for port in 18280 18281 18282; do
  for _ in $(seq 100); do curl -sf -o /dev/null -H 'x-user: warm' "http://127.0.0.1:$port/big" && break; sleep 0.1; done
  got=$(curl -sf -H 'x-user: warm' "http://127.0.0.1:$port/big" | cmp - "$work/www/big" && echo same)
  [ "$got" = same ] || { echo "bench/large.sh: port $port does not relay the file intact" >&2; exit 1; }
done
hz=$(getconf CLK_TCK)
printf '%-8s %4s %10s %9s %13s %14s\n' proxy run MiB/s p99 "cpu ms/MiB" "KiB/in flight"
for run in $(seq "$runs"); do
  for proxy in tether haproxy nginx; do
    case $proxy in tether) port=18280 ;; haproxy) port=18281 ;; nginx) port=18282 ;; esac
    before_rss=$(rss_kib $proxy)
    before=$(ticks $proxy)
    wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$work/keys.lua" "http://127.0.0.1:$port/" >"$work/out" &
    w=$!
    sleep $((secs / 2))
    during_rss=$(rss_kib $proxy)
    wait $w
    after=$(ticks $proxy)
    reqs=$(awk '/requests in/ {print $1}' "$work/out")
    p99=$(awk '$1 == "99%" {print $2}' "$work/out")
    errs=$(awk '/Non-2xx|Socket errors/ {print}' "$work/out" | tr '\n' ' ')
    python3 - "$proxy" "$run" "$reqs" "$secs" "$((after - before))" "$hz" "$before_rss" "$during_rss" "$conns" "$p99" "$errs" <<'PY'
import sys
proxy, run, reqs, secs, ticks, hz, rss0, rss1, conns, p99, errs = sys.argv[1:]
mib = int(reqs)  # one MiB per response
print(f"{proxy:<8} {run:>4} {mib / float(secs):>10.1f} {p99:>9} {int(ticks) / int(hz) * 1e3 / mib:>13.3f} "
      f"{(int(rss1) - int(rss0)) / int(conns):>14.1f} {errs}")
PY
  done
done
