#!/usr/bin/env bash
# Lease figures for docs/benchmarks.md (bench/leases.rs): revocation and expiry → every node
# without the backend, and the CPU of renewing 1,000 leases on one KeepAlive stream — first
# on etcd (one member on tmpfs, a control plane, three data planes), then on `tether up`'s
# embedded store. Release builds, loopback.
# Usage: bench/leases.sh        Needs: etcd (scripts/test installs Debian's etcd-server).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q --bin tether --example leases
. bench/cluster-env.sh
start_cluster
echo "== etcd: control plane + 3 data planes"
target/release/examples/leases "http://$API" "${pids[0]}" "$etcd_pid" "${admins[@]}"
echo "== tether up (embedded store, one process)"
RUST_LOG=warn target/release/tether up --api 127.0.0.1:17370 --proxy 127.0.0.1:17380 \
  --admin 127.0.0.1:17390 --proxy-threads 1 --data-dir "$work/up" & pids+=($!)
up_pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:17390/readyz >/dev/null && break; sleep 0.1; done
target/release/examples/leases http://127.0.0.1:17370 "$up_pid" - http://127.0.0.1:17390
