#!/usr/bin/env bash
# The edge under attack, for docs/benchmarks.md: `tether up` (release, one proxy thread, default
# edge settings) in front of one NGINX upstream; wrk (one thread, 32 connections, 10 s) measures
# req/s on the unloaded node, then again while bench/hold.py holds 2,000 slowloris sockets
# (re-opened as the edge closes them) and 5,000 idle keep-alive connections; prints both, the
# ratio (target ≥ 90%), and the node's resident memory before and while holding them.
# Usage: bench/edge.sh [SECONDS]      Needs: wrk, nginx, python3. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
for tool in wrk nginx python3; do
  command -v "$tool" >/dev/null || { echo "bench/edge.sh: $tool is missing" >&2; exit 2; }
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --locked -q --bin tether
. bench/upstream-env.sh
start_upstream 19111
cat >"$work/tether.yaml" <<CONF
backends:
  - { name: b1, address: 127.0.0.1:19111 }
directors:
  - name: users
    shard: { algorithm: varnish }
    members: [{ backend: b1 }]
routes:
  - { name: app, director: users, key: { header: x-user } }
CONF
RUST_LOG=error target/release/tether up --proxy-threads 1 --api 127.0.0.1:17170 \
  --proxy 127.0.0.1:18180 --admin 127.0.0.1:17171 --data-dir "$work/tether" \
  -f "$work/tether.yaml" & pids+=($!)
tether_pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:17171/readyz >/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2/1024 " MiB"}' "/proc/$tether_pid/status"; }
ticks() { awk '{print $14 + $15}' "/proc/$tether_pid/stat"; }
# wrk's req/s, and the proxy's CPU time per request over that run ("RPS CPU_US").
rps() {
  local t0 t1 out
  t0=$(ticks)
  out=$(wrk -t1 -c32 -d"${secs}s" -H 'x-user: u1' http://127.0.0.1:18180/)
  t1=$(ticks)
  echo "$out" | awk -v t0="$t0" -v t1="$t1" -v s="$secs" '/Requests\/sec/ { printf "%s %.2f", $2, (t1 - t0) * 10000 / ($2 * s) }'
}
rss_idle=$(rss)
read -r base base_cpu <<<"$(rps)"
python3 bench/hold.py 127.0.0.1:18180 2000 5000 $((secs + 15)) > "$work/hold.out" & hold=$!; pids+=($hold)
sleep 10   # the holder opens its connections
rss_held=$(rss)
open=$(curl -s http://127.0.0.1:17171/metrics | awk '/^tether_client_connections\{listener="proxy"\}/ {print $2}')
read -r loaded loaded_cpu <<<"$(rps)"
wait "$hold" || true
echo "unloaded: $base req/s ($base_cpu µs proxy CPU/request); while holding (${open} client connections open): $loaded req/s ($loaded_cpu µs/request, including the attack's own reads); ratio $(awk -v a="$base" -v b="$loaded" 'BEGIN { printf "%.1f%%", 100 * b / a }')"
echo "resident memory: $rss_idle unloaded, $rss_held while holding them"
cat "$work/hold.out"
