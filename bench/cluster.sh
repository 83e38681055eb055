#!/usr/bin/env bash
# Cluster-mode figures for docs/benchmarks.md: starts one etcd member (tmpfs), one control
# plane and three data planes (release builds, loopback), then runs bench/cluster.rs
# (propagation over 200 changes; 10,000 backends: apply, list + build, one-backend change)
# and prints each data plane's resident memory with 10,000 backends.
# Usage: bench/cluster.sh        Needs: etcd (scripts/test installs Debian's etcd-server).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || { echo "bench/cluster.sh: etcd missing (run scripts/test once)" >&2; exit 2; }
cargo build --release --locked -q --bin tether --example cluster
work=$(mktemp -d)
shm=/dev/shm/tether-bench-$$
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$work" "$shm"; }
trap cleanup EXIT
etcd --name b --data-dir "$shm" --listen-client-urls http://127.0.0.1:23791 \
  --advertise-client-urls http://127.0.0.1:23791 --listen-peer-urls http://127.0.0.1:23801 \
  --initial-advertise-peer-urls http://127.0.0.1:23801 --initial-cluster b=http://127.0.0.1:23801 \
  --heartbeat-interval 10 --election-timeout 100 >"$work/etcd.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:23791/health | grep -q true && break; sleep 0.1; done
RUST_LOG=warn target/release/tether controlplane --etcd 127.0.0.1:23791 --api 127.0.0.1:17270 & pids+=($!)
admins=()
dp_pids=()
for i in 1 2 3; do
  RUST_LOG=warn target/release/tether dataplane --etcd 127.0.0.1:23791 --proxy "127.0.0.1:1828$i" \
    --admin "127.0.0.1:1929$i" --proxy-threads 1 --data-dir "$work/dp$i" & pids+=($!); dp_pids+=($!)
  admins+=("http://127.0.0.1:1929$i")
done
for a in "${admins[@]}"; do
  for _ in $(seq 100); do curl -sf "$a/readyz" >/dev/null && break; sleep 0.1; done
done
target/release/examples/cluster http://127.0.0.1:17270 127.0.0.1:23791 "${admins[@]}"
for p in "${dp_pids[@]}"; do
  echo "data plane pid $p: $(grep VmRSS "/proc/$p/status" | awk '{print $2/1024 " MiB"}') resident with 10,000 backends"
done
