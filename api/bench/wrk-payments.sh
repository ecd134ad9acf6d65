#!/usr/bin/env bash
# Loads a running server with wrk (Debian's package): onboards a merchant with
# the admin key, creates its API key, then runs api/bench/wrk-payments.lua.
#   PAYSTREAM_ADMIN_KEY=<admin key> api/bench/wrk-payments.sh [URL] [SECONDS] [CONNECTIONS]
set -euo pipefail
url=${1:-http://127.0.0.1:8080}
seconds=${2:-30}
connections=${3:-64}
admin=${PAYSTREAM_ADMIN_KEY:?set PAYSTREAM_ADMIN_KEY to the server\'s admin key}
here=$(cd "$(dirname "$0")" && pwd)
merchant=$(curl -fsS -X POST "$url/v1/merchants" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
  -d '{"name":"wrk Shop","country":"US","default_currency":"USD","tier":"A","fees":{"percent_bps":290,"fixed":30}}')
merchant_id=$(printf '%s' "$merchant" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
key=$(curl -fsS -X POST "$url/v1/api_keys" -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
  -d "{\"role\":\"merchant\",\"merchant_id\":\"$merchant_id\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
PAYSTREAM_WRK_KEY=$key wrk -t2 -c"$connections" -d"${seconds}s" --latency -s "$here/wrk-payments.lua" "$url"
