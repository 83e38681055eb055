#!/usr/bin/env bash
# Proxy figures for docs/benchmarks.md: requests per second, p50/p99 latency and proxy CPU
# time per request, for `tether up`, HAProxy and NGINX (Debian packages) in the same run, each
# with consistent hashing keyed on the x-user header (10,000 distinct keys) over three
# upstreams, upstream keep-alive, X-Forwarded-For added, one worker thread each. The upstream
# is one NGINX worker answering `200 bN` from memory; wrk runs one thread.
#
# Usage: bench/proxy.sh [RUNS] [SECONDS] [CONNECTIONS]   (defaults 3, 10, 32)
# Needs: wrk haproxy nginx (apt-get install wrk haproxy nginx-light). Loopback only; bounded
# by RUNS x 3 proxies x SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
secs=${2:-10}
conns=${3:-32}
for tool in wrk haproxy nginx; do
  command -v "$tool" >/dev/null || { echo "bench/proxy.sh: $tool is missing (apt-get install wrk haproxy nginx-light)" >&2; exit 2; }
done
cargo build --release --locked -q --bin tether
. bench/upstream-env.sh
start_upstream 19101 19102 19103

# Tether.
cat >"$work/tether.yaml" <<EOF
backends:
  - { name: b1, address: 127.0.0.1:19101 }
  - { name: b2, address: 127.0.0.1:19102 }
  - { name: b3, address: 127.0.0.1:19103 }
directors:
  - name: users
    shard: { algorithm: varnish }
    members: [{ backend: b1 }, { backend: b2 }, { backend: b3 }]
routes:
  - { name: app, director: users, key: { header: x-user } }
EOF
RUST_LOG=warn target/release/tether up --proxy-threads 1 --api 127.0.0.1:17070 \
  --proxy 127.0.0.1:18080 --admin 127.0.0.1:17071 --data-dir "$work/tether" \
  -f "$work/tether.yaml" & pids+=($!)
tether_pid=$!

# HAProxy.
cat >"$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  option forwardfor
  http-reuse always
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend f
  bind 127.0.0.1:18081
  default_backend b
backend b
  balance hdr(x-user)
  hash-type consistent
  server b1 127.0.0.1:19101
  server b2 127.0.0.1:19102
  server b3 127.0.0.1:19103
EOF
haproxy -f "$work/haproxy.cfg" -db & pids+=($!)
haproxy_pid=$!

# NGINX.
cat >"$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  upstream u {
    hash \$http_x_user consistent;
    server 127.0.0.1:19101;
    server 127.0.0.1:19102;
    server 127.0.0.1:19103;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:18082;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://u;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
EOF
nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)

cat >"$work/keys.lua" <<'EOF'
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/", { ["x-user"] = "user-" .. (i % 10000) })
end
EOF

# Every process of a proxy (NGINX: master and worker), for CPU accounting.
procs() {
  case $1 in
    tether) echo "$tether_pid" ;;
    haproxy) echo "$haproxy_pid" ;;
    nginx) pgrep -f "nginx.*$work/nginx.conf" ; pgrep -P "$(cat "$work/nginx.pid")" ;;
  esac
}
ticks() { local t=0; for p in $(procs "$1" | sort -u); do
  read -r -a f <"/proc/$p/stat"; t=$((t + f[13] + f[14])); done; echo "$t"; }

for port in 18080 18081 18082; do
  for _ in $(seq 100); do curl -sf -H 'x-user: warm' "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
done
hz=$(getconf CLK_TCK)
printf '%-8s %4s %10s %9s %9s %12s\n' proxy run req/s p50 p99 "cpu µs/req"
for run in $(seq "$runs"); do
  for proxy in tether haproxy nginx; do
    case $proxy in tether) port=18080 ;; haproxy) port=18081 ;; nginx) port=18082 ;; esac
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
