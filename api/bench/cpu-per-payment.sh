#!/usr/bin/env bash
# Server CPU time per payment under `paystream bench http` load: starts a server
# on a fresh data directory, loads it through `bench http --url`, and divides the
# server's user+system CPU time (/proc/<pid>/stat) by the payments made. Less
# sensitive to other work on the machine than payments/s.
#   api/bench/cpu-per-payment.sh [BINARY] [SECONDS]
set -euo pipefail
bin=${1:-target/release/paystream}
seconds=${2:-20}
data=$(mktemp -d)
port=$((20000 + RANDOM % 10000))
key=cpu-bench-admin-key
PAYSTREAM_LOG=warn PAYSTREAM_ADMIN_KEY=$key "$bin" serve --data "$data" --listen "127.0.0.1:$port" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do curl -s -o /dev/null "127.0.0.1:$port/healthz" && break; sleep 0.1; done
ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
hz=$(getconf CLK_TCK)
before=$(ticks)
out=$("$bin" bench http --url "127.0.0.1:$port" --admin-key "$key" --clients 64 --seconds "$seconds" --interval-seconds "$seconds" 2>/dev/null)
after=$(ticks)
payments=$(printf '%s\n' "$out" | awk '/^payments:/{print $2}')
printf '%s\n' "$out" | grep -E '^payments:|^latency'
awk -v t=$((after - before)) -v hz="$hz" -v p="$payments" \
  'BEGIN { printf "server CPU: %.1f s for %d payments = %.3f ms per payment\n", t / hz, p, 1000 * t / hz / p }'
