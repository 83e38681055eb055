# Sourced by bench/proxy.sh and bench/edge.sh: a temporary work directory, every process
# started (`pids`) stopped on exit, and `start_upstream PORT...`: one NGINX worker answering
# `200 bN` from memory on each port (N counting from 1), with keep-alive.
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.2; rm -rf "$work"; }
trap cleanup EXIT

start_upstream() {
  local i=0 servers=""
  for port in "$@"; do
    i=$((i + 1))
    servers+="  server { listen 127.0.0.1:$port; location / { return 200 \"b$i\\n\"; } }"$'\n'
  done
  cat >"$work/upstream.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/upstream.pid;
error_log $work/upstream.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
$servers}
CONF
  nginx -c "$work/upstream.conf" -p "$work" & pids+=($!)
}
