#!/usr/bin/env bash
# `make run`: serves the API on a local Redis, for a person trying it out.
# Starts its own redis-server (data in .run/redis, AOF on) unless
# COUPONSVC_REDIS_URL names one, and stops only what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

run_dir="$PWD/.run"
mkdir -p "$run_dir/redis"

if [ ! -s "$run_dir/jwt-secret" ]; then
  .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(48))' > "$run_dir/jwt-secret"
  chmod 600 "$run_dir/jwt-secret"
fi
export COUPONSVC_JWT_SECRET="${COUPONSVC_JWT_SECRET:-$(cat "$run_dir/jwt-secret")}"
export COUPONSVC_HOST="${COUPONSVC_HOST:-127.0.0.1}"
export COUPONSVC_PORT="${COUPONSVC_PORT:-8000}"

redis_pid=""
if [ -z "${COUPONSVC_REDIS_URL:-}" ]; then
  port="${REDIS_PORT:-6379}"
  if redis-cli -p "$port" ping >/dev/null 2>&1; then
    echo "using the Redis already listening on 127.0.0.1:$port"
  else
    redis-server --port "$port" --bind 127.0.0.1 --dir "$run_dir/redis" \
      --appendonly yes --appendfsync everysec --save "" \
      --daemonize yes --pidfile "$run_dir/redis.pid" --logfile "$run_dir/redis.log"
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis_pid="$(cat "$run_dir/redis.pid")"
    echo "started redis-server (pid $redis_pid) on 127.0.0.1:$port, data in .run/redis"
  fi
  export COUPONSVC_REDIS_URL="redis://127.0.0.1:$port/0"
fi

stop_redis() {
  if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; fi
}
trap stop_redis EXIT

token="$(.venv/bin/couponsvc token --sub admin --scope 'coupons:admin coupons:write' --ttl 86400)"
base="http://$COUPONSVC_HOST:$COUPONSVC_PORT"
cat <<MSG

Admin token (valid 24 hours):
  export TOKEN=$token

Try it:
  curl -s -X POST $base/coupons -H "Authorization: Bearer \$TOKEN" \\
    -H 'Content-Type: application/json' \\
    -d '{"name": "Spring sale", "maxPerUser": 1, "initialCouponAmount": 100}'

The API reference is at $base/openapi.json; README.md walks through every call.

MSG
.venv/bin/couponsvc serve
