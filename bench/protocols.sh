#!/usr/bin/env bash
# gRPC and WebSocket figures for docs/benchmarks.md (programs in bench/protocols.rs):
#   grpc       unary grpc.health.v1 Check calls over h2c from one HTTP/2 connection (64 in
#              flight) to a tonic backend, through `tether up` (backend protocol h2c), HAProxy
#              (proto h2 both sides) and NGINX (grpc_pass) — calls per second and proxy CPU
#              time per call, one worker thread each;
#   websocket  echo round trips (32-byte text messages, one at a time) through `tether up` and
#              direct to the backend: p50 and p99.
#
# Usage: bench/protocols.sh [RUNS] [CALLS] [MESSAGES]   (defaults 3, 100000, 10000)
# Needs: haproxy nginx. Loopback only; bounded by the counts.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
calls=${2:-100000}
messages=${3:-10000}
for tool in haproxy nginx; do
  command -v "$tool" >/dev/null || { echo "bench/protocols.sh: $tool is missing" >&2; exit 2; }
done
cargo build --release --locked -q --bin tether --example protocols
tool=target/release/examples/protocols
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.2; rm -rf "$work"; }
trap cleanup EXIT

$tool grpc-backend 19201 & pids+=($!)
$tool ws-backend 19202 & pids+=($!)

cat >"$work/tether.yaml" <<CONF
backends:
  - { name: g, address: 127.0.0.1:19201, protocol: h2c }
  - { name: w, address: 127.0.0.1:19202 }
directors:
  - { name: grpc, shard: {}, members: [{ backend: g }] }
  - { name: ws, shard: {}, members: [{ backend: w }] }
routes:
  - { name: a-grpc, path_prefix: /grpc., director: grpc, key: { header: x-user } }
  - { name: b-ws, director: ws, key: { url: true } }
CONF
RUST_LOG=error target/release/tether up --proxy-threads 1 --api 127.0.0.1:17070 \
  --proxy 127.0.0.1:18080 --admin 127.0.0.1:17071 --data-dir "$work/tether" \
  -f "$work/tether.yaml" & pids+=($!)
tether_pid=$!

cat >"$work/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend f
  bind 127.0.0.1:18081 proto h2
  default_backend g
backend g
  server g 127.0.0.1:19201 proto h2
CONF
haproxy -f "$work/haproxy.cfg" -db & pids+=($!)
haproxy_pid=$!

cat >"$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  upstream g { server 127.0.0.1:19201; keepalive 16; }
  server {
    listen 127.0.0.1:18082 http2;
    keepalive_requests 10000000;
    location / { grpc_pass grpc://g; }
  }
}
CONF
nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)
sleep 1.5

procs() {
  case $1 in
    tether) echo "$tether_pid" ;;
    haproxy) echo "$haproxy_pid" ;;
    nginx) cat "$work/nginx.pid"; pgrep -P "$(cat "$work/nginx.pid")" ;;
  esac
}
ticks() { local t=0; for p in $(procs "$1" | sort -u); do
  read -r -a f <"/proc/$p/stat"; t=$((t + f[13] + f[14])); done; echo "$t"; }
hz=$(getconf CLK_TCK)

printf '%-6s %4s %12s %14s %s\n' proxy run "calls/s" "cpu µs/call" errors
for run in $(seq "$runs"); do
  for proxy in tether haproxy nginx; do
    case $proxy in tether) port=18080 ;; haproxy) port=18081 ;; nginx) port=18082 ;; esac
    $tool grpc-load "http://127.0.0.1:$port" 10000 64 >/dev/null  # warm-up
    before=$(ticks $proxy)
    out=$($tool grpc-load "http://127.0.0.1:$port" "$calls" 64)
    after=$(ticks $proxy)
    n=$(echo "$out" | sed 's/.*calls=\([0-9]*\).*/\1/')
    s=$(echo "$out" | sed 's/.*seconds=\([0-9.]*\).*/\1/')
    e=$(echo "$out" | sed 's/.*errors=\([0-9]*\).*/\1/')
    python3 -c "print(f'%-6s %4s %12.0f %14.2f %s' % ('$proxy', '$run', $n / $s, ($after - $before) / $hz / $n * 1e6, '$e'))"
  done
done

printf '\n%-8s %4s %8s %8s\n' path run "p50 µs" "p99 µs"
for run in $(seq "$runs"); do
  for path in direct tether; do
    case $path in direct) url=ws://127.0.0.1:19202/ ;; tether) url=ws://127.0.0.1:18080/ ;; esac
    out=$($tool ws-rtt "$url" "$messages")
    p50=$(echo "$out" | sed 's/.*p50_us=\([0-9]*\).*/\1/')
    p99=$(echo "$out" | sed 's/.*p99_us=\([0-9]*\).*/\1/')
    printf '%-8s %4s %8s %8s\n' "$path" "$run" "$p50" "$p99"
  done
done
