# Sourced by bench/proxy.sh, bench/edge.sh, bench/tls.sh and bench/large.sh: a temporary work
# directory, every process started (`pids`) stopped on exit, and the processes those
# benchmarks compare:
#   start_upstream PORT...        one NGINX worker answering from memory on each port (N
#                                 counting from 1): `200`, a 100-byte body starting `bN`, and
#                                 `X-Upstream: bN` (the stickiness check), with keep-alive;
#   start_tether PORT API ADMIN UPSTREAM_PORT...
#   start_haproxy PORT UPSTREAM_PORT...
#   start_nginx PORT UPSTREAM_PORT...
#                                 one proxy thread/worker each (PROXY_THREADS=N: N each),
#                                 consistent hashing keyed on the
#                                 x-user header over the upstreams, upstream keep-alive,
#                                 X-Forwarded-For added, and the same client timeouts (head
#                                 10 s, keep-alive idle 60 s, as Tether's defaults);
#   procs NAME, ticks NAME        a proxy's processes, and their CPU time in clock ticks.
#   need TOOL...                  exits naming a missing tool.
# TETHER_BIN runs another tether binary (a baseline build, for A/B rows).
# TETHER_EXTRA (flags), HAPROXY_EXTRA (frontend lines) and NGINX_EXTRA (server lines) add to
# a proxy's configuration (bench/tls.sh: the TLS listeners).
# need TOOL...: stops the benchmark (exit 2) naming the first tool that is not installed.
need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || {
      echo "$0: $tool is missing (Debian: apt-get install wrk haproxy nginx-light openssl)" >&2
      exit 2
    }
  done
}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.2; rm -rf "$work"; }
trap cleanup EXIT

# NGINX from $work/NAME.conf: CONNS connections, MAIN (extra main-context lines, possibly
# empty), HTTP (the http block's contents after `access_log off;`), WORKERS workers (default 1).
run_nginx() {
  local name=$1 conns=$2 main=$3 http=$4 workers=${5:-1}
  cat >"$work/$name.conf" <<CONF
worker_processes $workers;
${main}daemon off;
pid $work/$name.pid;
error_log $work/$name.err;
events { worker_connections $conns; }
http {
  access_log off;
$http}
CONF
  nginx -c "$work/$name.conf" -p "$work" & pids+=($!)
}

start_upstream() {
  local i=0 servers=""
  for port in "$@"; do
    i=$((i + 1))
    body=$(printf 'b%-98s' "$i" | tr ' ' '.')
    servers+="  server { listen 127.0.0.1:$port; location / { add_header X-Upstream b$i; return 200 \"$body\\n\"; } }"$'\n'
  done
  run_nginx upstream 4096 "" "  keepalive_requests 1000000;
$servers"
}

start_tether() {
  local port=$1 api=$2 admin=$3 i=0 backends="" members=""
  shift 3
  for up in "$@"; do
    i=$((i + 1))
    backends+="  - { name: b$i, address: 127.0.0.1:$up }"$'\n'
    members+="{ backend: b$i }, "
  done
  cat >"$work/tether-$port.yaml" <<CONF
backends:
$backends
directors:
  - name: users
    shard: { algorithm: varnish }
    members: [${members%, }]
routes:
  - { name: app, director: users, key: { header: x-user } }
CONF
  RUST_LOG=error "${TETHER_BIN:-target/release/tether}" up --proxy-threads "${PROXY_THREADS:-1}" --api "127.0.0.1:$api" \
    --proxy "127.0.0.1:$port" --admin "127.0.0.1:$admin" --data-dir "$work/tether-$port" \
    -f "$work/tether-$port.yaml" ${TETHER_EXTRA:-} & pids+=($!)
  tether_pid=$!
}

start_haproxy() {
  local port=$1 i=0 servers=""
  shift
  for up in "$@"; do
    i=$((i + 1))
    servers+="  server b$i 127.0.0.1:$up"$'\n'
  done
  cat >"$work/haproxy.cfg" <<CONF
global
  nbthread ${PROXY_THREADS:-1}
  maxconn 9000
defaults
  mode http
  option forwardfor
  http-reuse always
  timeout connect 5s
  timeout http-request 10s
  timeout http-keep-alive 60s
  timeout client 60s
  timeout server 30s
frontend f
  bind 127.0.0.1:$port
${HAPROXY_EXTRA:-}
  default_backend b
backend b
  balance hdr(x-user)
  hash-type consistent
$servers
CONF
  haproxy -f "$work/haproxy.cfg" -db & pids+=($!)
  haproxy_pid=$!
}

start_nginx() {
  local port=$1 servers=""
  shift
  for up in "$@"; do servers+="    server 127.0.0.1:$up;"$'\n'; done
  run_nginx nginx 9000 "worker_rlimit_nofile 19000;"$'\n' "  client_header_timeout 10s;
  keepalive_timeout 60s;
  upstream u {
    hash \$http_x_user consistent;
$servers
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$port;
${NGINX_EXTRA:-}
    keepalive_requests 1000000;
    location / {
      proxy_pass http://u;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
" "${PROXY_THREADS:-1}"
}

# Every process of a proxy (NGINX: master and worker), for CPU and memory accounting.
procs() {
  case $1 in
    tether) echo "$tether_pid" ;;
    baseline) echo "$baseline_pid" ;;
    haproxy) echo "$haproxy_pid" ;;
    nginx) pgrep -f "nginx.*$work/nginx.conf" ; pgrep -P "$(cat "$work/nginx.pid")" ;;
  esac
}
ticks() { local t=0; for p in $(procs "$1" | sort -u); do
  read -r -a f <"/proc/$p/stat"; t=$((t + f[13] + f[14])); done; echo "$t"; }
# Resident memory of a proxy's processes, in KiB.
rss_kib() { local t=0; for p in $(procs "$1" | sort -u); do
  t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo "$t"; }
