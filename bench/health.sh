#!/usr/bin/env bash
# Shared-health figures for docs/benchmarks.md: starts one etcd member (tmpfs) and one control
# plane (release build, loopback), then runs bench/health.rs, which starts and stops data
# planes itself, with shared health off and on: probes/s at a backend for N = 1, 3, 10 nodes;
# change → all nodes routing on it (p50/p99 over 50 transitions); agreement while a backend
# flaps with the nodes out of step.
# Usage: bench/health.sh        Needs: etcd (scripts/test installs Debian's etcd-server).
# Bounded: about 4 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q --bin tether --example health
. bench/cluster-env.sh
start_etcd
for _ in $(seq 100); do etcd_healthy && break; sleep 0.1; done
RUST_LOG=warn target/release/tether controlplane --etcd "$ETCD" --api "$API" & pids+=($!)
for _ in $(seq 100); do
  target/release/tether backend list --server "$API" >/dev/null 2>&1 && break; sleep 0.1
done
target/release/examples/health target/release/tether "$API" "$ETCD" "$work"
