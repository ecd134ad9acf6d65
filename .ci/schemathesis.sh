#!/usr/bin/env bash
# Schemathesis against the running paystream binary: property-based requests
# generated from the served OpenAPI document, each answer checked for server
# errors and against the document (status, content type, headers, schema).
#
# Installs its pinned schemathesis into a venv under the target directory,
# starts the binary itself (PAYSTREAM_BIN, else a debug build) on a free port
# with a temporary data directory and a fixed admin key, runs schemathesis
# once as the admin and once as a merchant (they may call different routes),
# then stops the server. Bounded: at most SCHEMATHESIS_MAX_EXAMPLES examples
# per operation, one worker (CPython 3.11's compiler is not safe across the
# threads of several workers).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-20}"
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
VENV="$TARGET_DIR/schemathesis-venv-$SCHEMATHESIS_VERSION"
ADMIN_KEY=psk_schemathesis_admin_key

if [ ! -x "$VENV/bin/schemathesis" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

BIN="${PAYSTREAM_BIN:-}"
if [ -z "$BIN" ]; then
  cargo build --quiet -p paystream-api --bin paystream
  BIN="$TARGET_DIR/debug/paystream"
fi

WORK="$(mktemp -d)"
SERVER_PID=
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap stop_server EXIT

PAYSTREAM_ADMIN_KEY="$ADMIN_KEY" PAYSTREAM_LOG=warn \
  "$BIN" serve --data "$WORK/data" --listen 127.0.0.1:0 >"$WORK/stdout" 2>"$WORK/stderr" &
SERVER_PID=$!
API=
for _ in $(seq 1 600); do
  API="$(sed -n 's/^listening on \(http:\/\/[0-9.:]*\)$/\1/p' "$WORK/stdout" | head -n 1)"
  [ -n "$API" ] && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "paystream serve exited before listening:" >&2
    cat "$WORK/stderr" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$API" ]; then
  echo "paystream serve did not print its address within 60 s" >&2
  exit 1
fi

# A merchant and its key, so the merchant-only routes get past 403.
MERCHANT_KEY="$(
  "$VENV/bin/python" - "$API" "$ADMIN_KEY" <<'PY'
import json, sys, urllib.request
api, admin = sys.argv[1], sys.argv[2]
def post(path, body):
    request = urllib.request.Request(api + path, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": "Bearer " + admin, "Content-Type": "application/json"})
    with urllib.request.urlopen(request) as answer:
        return json.load(answer)
merchant = post("/v1/merchants", {"name": "Schemathesis", "country": "US", "default_currency": "USD",
                                  "tier": "A", "fees": {"percent_bps": 250, "fixed": 30}})
print(post("/v1/api_keys", {"role": "merchant", "merchant_id": merchant["id"]})["key"])
PY
)"

# No server error, no answer outside the document (status, content type,
# headers, body schema), auth never ignored, undocumented methods refused with
# 405 and an Allow header, deleted objects gone. (Not positive_data_acceptance
# and negative_data_rejection: the document cannot say every rule, e.g. a
# date range of at most 366 days, so schema-valid requests may rightly be 400s.)
CHECKS="${SCHEMATHESIS_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,ignored_auth,unsupported_method,allow_header_conformance,missing_required_header,use_after_free,ensure_resource_availability}"
status=0
for key in "$ADMIN_KEY" "$MERCHANT_KEY"; do
  "$VENV/bin/schemathesis" run "$API/openapi.json" \
    --header "Authorization: Bearer $key" \
    --checks "$CHECKS" \
    --max-examples "$MAX_EXAMPLES" \
    --seed 1 \
    --workers 1 \
    --no-color \
    --warnings off \
    --suppress-health-check all || status=$?
done

if grep -q "panicked" "$WORK/stderr"; then
  echo "the server panicked:" >&2
  grep -A5 "panicked" "$WORK/stderr" >&2
  status=1
fi
exit "$status"
