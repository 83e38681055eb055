#!/usr/bin/env bash
# DNS discovery figures for docs/benchmarks.md (bench/discovery.rs): a DNS answer changing →
# every node routing by it, first on etcd (one member on tmpfs, a control plane resolving
# with the benchmark's name server, three data planes), then on `tether up`. Release builds,
# loopback.
# Usage: bench/discovery.sh        Needs: etcd (scripts/test installs Debian's etcd-server).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q --bin tether --example discovery
. bench/cluster-env.sh
CP_EXTRA="--dns-server 127.0.0.1:15353" start_cluster
echo "== etcd: control plane + 3 data planes"
target/release/examples/discovery "http://$API" "${admins[@]}"
echo "== tether up (embedded store, one process)"
RUST_LOG=warn target/release/tether up --api 127.0.0.1:17370 --proxy 127.0.0.1:17380 \
  --admin 127.0.0.1:17390 --proxy-threads 1 --data-dir "$work/up" \
  --dns-server 127.0.0.1:15353 & pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:17390/readyz >/dev/null && break; sleep 0.1; done
target/release/examples/discovery http://127.0.0.1:17370 http://127.0.0.1:17390
