#!/usr/bin/env bash
# Cluster-mode figures for docs/benchmarks.md: starts one etcd member (tmpfs), one control
# plane and three data planes (release builds, loopback), then runs bench/cluster.rs
# (propagation over 200 changes; 10,000 backends: apply, list + build, one-backend change)
# and prints each data plane's resident memory with 10,000 backends.
# Usage: bench/cluster.sh        Needs: etcd (scripts/test installs Debian's etcd-server).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q --bin tether --example cluster
. bench/cluster-env.sh
start_cluster
target/release/examples/cluster "http://$API" "$ETCD" "${admins[@]}"
for p in "${dp_pids[@]}"; do
  echo "data plane pid $p: $(grep VmRSS "/proc/$p/status" | awk '{print $2/1024 " MiB"}') resident with 10,000 backends"
done
