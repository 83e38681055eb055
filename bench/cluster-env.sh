# Sourced by bench/cluster.sh and bench/recovery.sh: starts one etcd member (tmpfs), one control
# plane and three data planes (release build, loopback) and stops them on exit.
# After `start_cluster`: $API, $ETCD, admins=(admin URLs), dp_pids=(data plane pids).
# $CP_EXTRA: further arguments of the control plane.
command -v etcd >/dev/null || { echo "$0: etcd missing (run scripts/test once)" >&2; exit 2; }
work=$(mktemp -d)
shm=/dev/shm/tether-bench-$$
pids=()
etcd_pid=
cleanup() {
  for p in "${pids[@]}" $etcd_pid; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  rm -rf "$work" "$shm"
}
trap cleanup EXIT
ETCD=127.0.0.1:23791
API=127.0.0.1:17270

start_etcd() {
  etcd --name b --data-dir "$shm" --listen-client-urls "http://$ETCD" \
    --advertise-client-urls "http://$ETCD" --listen-peer-urls http://127.0.0.1:23801 \
    --initial-advertise-peer-urls http://127.0.0.1:23801 --initial-cluster b=http://127.0.0.1:23801 \
    --heartbeat-interval 10 --election-timeout 100 >>"$work/etcd.log" 2>&1 &
  etcd_pid=$!
}

etcd_healthy() { curl -sf "http://$ETCD/health" 2>/dev/null | grep -q true; }

start_cluster() {
  start_etcd
  for _ in $(seq 100); do etcd_healthy && break; sleep 0.1; done
  RUST_LOG=warn target/release/tether controlplane --etcd "$ETCD" --api "$API" ${CP_EXTRA:-} & pids+=($!)
  admins=()
  dp_pids=()
  for i in 1 2 3; do
    RUST_LOG=warn target/release/tether dataplane --etcd "$ETCD" --proxy "127.0.0.1:1828$i" \
      --admin "127.0.0.1:1929$i" --proxy-threads 1 --data-dir "$work/dp$i" & pids+=($!); dp_pids+=($!)
    admins+=("http://127.0.0.1:1929$i")
  done
  for a in "${admins[@]}"; do
    for _ in $(seq 100); do curl -sf "$a/readyz" >/dev/null && break; sleep 0.1; done
  done
}
