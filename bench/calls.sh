#!/usr/bin/env bash
# The API's capped calls at their caps (bench/calls.rs), against `tether up` (release build,
# loopback) with a read-only and an admin token.
# Usage: bench/calls.sh [TETHER_BINARY]   (another build, as a worktree's, for a before/after)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q --bin tether --example calls
bin=${1:-target/release/tether}
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; sleep 0.2; rm -rf "$work"' EXIT
printf 'admin:bench-admin-token-0123\nread-only:bench-reader-token-0123\n' >"$work/tokens"
chmod 600 "$work/tokens"
RUST_LOG=error "$bin" up --api 127.0.0.1:17370 --proxy 127.0.0.1:18370 --admin 127.0.0.1:19370 \
  --data-dir "$work/data" --token-file "$work/tokens" & pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:19370/readyz >/dev/null && break; sleep 0.1; done
target/release/examples/calls http://127.0.0.1:17370 bench-reader-token-0123 bench-admin-token-0123
