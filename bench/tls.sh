#!/usr/bin/env bash
# HTTPS figures for docs/benchmarks.md, `tether up --https`, HAProxy and NGINX in the same run,
# each terminating TLS with the same ECDSA P-256 certificate (ALPN h2,http/1.1; one worker
# thread) in front of the consistent-hash setup of bench/proxy.sh:
#   keep-alive   requests per second and proxy CPU time per request over HTTPS keep-alive
#                connections (wrk, 32 connections, TLS 1.3);
#   handshakes   new TLS connections per second and proxy CPU time per handshake (wrk with
#                `Connection: close`: one full handshake per request, no resumption).
#
# Usage: bench/tls.sh [RUNS] [SECONDS]   (defaults 3, 10)
# Needs: wrk haproxy nginx openssl. Loopback only; bounded by RUNS x 2 x 3 x SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
secs=${2:-10}
. bench/upstream-env.sh
need wrk haproxy nginx openssl
cargo build --release --locked -q --bin tether

# One ECDSA P-256 certificate for bench.test, in the three formats the proxies read.
mkdir -p "$work/certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" >"$work/certs/bench.pem"

start_upstream 19101 19102 19103 19104
TETHER_EXTRA="--https 127.0.0.1:18443 --cert-dir $work/certs" \
  start_tether 18080 17070 17071 19101 19102 19103 19104
HAPROXY_EXTRA="  bind 127.0.0.1:18444 ssl crt $work/certs/bench.pem alpn h2,http/1.1" \
  start_haproxy 18081 19101 19102 19103 19104
NGINX_EXTRA="    listen 127.0.0.1:18445 ssl http2;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:s:10m;" \
  start_nginx 18082 19101 19102 19103 19104

cat >"$work/keys.lua" <<'EOF'
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/", { ["x-user"] = "user-" .. (i % 10000), ["Host"] = "bench.test" })
end
EOF
cat >"$work/close.lua" <<'EOF'
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/", { ["x-user"] = "user-" .. (i % 10000), ["Host"] = "bench.test",
    ["Connection"] = "close" })
end
EOF

for port in 18443 18444 18445; do
  for _ in $(seq 100); do
    curl -skf --resolve "bench.test:$port:127.0.0.1" -H 'x-user: warm' "https://bench.test:$port/" >/dev/null && break
    sleep 0.1
  done
done
hz=$(getconf CLK_TCK)
printf '%-11s %-8s %4s %10s %9s %9s %14s\n' test proxy run "req/s" p50 p99 "cpu µs/req"
for run in $(seq "$runs"); do
  for test in keep-alive handshakes; do
    case $test in keep-alive) script=keys.lua conns=32 ;; handshakes) script=close.lua conns=16 ;; esac
    for proxy in tether haproxy nginx; do
      case $proxy in tether) port=18443 ;; haproxy) port=18444 ;; nginx) port=18445 ;; esac
      url="https://127.0.0.1:$port/"
      wrk -t1 -c"$conns" -d2s -s "$work/$script" "$url" >/dev/null  # warm-up
      before=$(ticks $proxy)
      out=$(wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$work/$script" "$url")
      after=$(ticks $proxy)
      reqs=$(echo "$out" | awk '/requests in/ {print $1}')
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
      p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
      errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
      cpu=$(python3 -c "print(f'{($after - $before) / $hz / $reqs * 1e6:.2f}')")
      printf '%-11s %-8s %4s %10s %9s %9s %14s %s\n' "$test" "$proxy" "$run" "$rps" "$p50" "$p99" "$cpu" "$errs"
    done
  done
done
