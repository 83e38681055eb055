#!/usr/bin/env bash
# Recovery after an etcd outage, for docs/benchmarks.md: with one etcd member (tmpfs), one
# control plane and three data planes, etcd is killed (SIGKILL), left down for each outage
# length, and started again on the same data. Then, as soon as etcd answers /health, one
# change is written through the API (retried until the control plane takes it), and each data
# plane's /state is polled (every 5 ms) until it has applied it.
# Prints, per outage: etcd answering → write committed, write → each node applied, and etcd
# answering → all nodes applied (the issue's target: ≤ 1 s).
# Usage: bench/recovery.sh [OUTAGE_SECONDS...]   (default: 5 30 120)
# Needs: etcd (scripts/test installs Debian's etcd-server), curl.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q --bin tether
. bench/cluster-env.sh
start_cluster
tether=target/release/tether
export TETHER_SERVER="http://$API"
$tether backend create b1 --address 127.0.0.1:9 >/dev/null
now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f ms", (b - a) * 1000 }'; }
applied() {
  curl -sf "$1/state?backends=false" | sed -n 's/.*"applied_revision":\([0-9]*\).*/\1/p'
}
state=sick
for outage in "${@:-5 30 120}"; do
  for outage_s in $outage; do
    kill -9 "$etcd_pid"
    wait "$etcd_pid" 2>/dev/null || true
    sleep "$outage_s"
    start_etcd
    until etcd_healthy; do sleep 0.005; done
    t_up=$(now)
    rev=
    until rev=$($tether health set b1 "$state" -o json 2>/dev/null | sed -n 's/.*"revision":\([0-9]*\).*/\1/p') && [ -n "$rev" ]; do
      sleep 0.005
    done
    t_write=$(now)
    per_node=()
    for a in "${admins[@]}"; do
      until [ "$(applied "$a" || echo 0)" -ge "$rev" ]; do sleep 0.005; done
      per_node+=("$(ms "$t_write" "$(now)")")
    done
    t_all=$(now)
    echo "outage ${outage_s} s: etcd answering -> write committed $(ms "$t_up" "$t_write"); write -> applied on each node: ${per_node[*]}; etcd answering -> all 3 nodes applied $(ms "$t_up" "$t_all")"
    [ "$state" = sick ] && state=healthy || state=sick
  done
done
