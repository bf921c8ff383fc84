#!/usr/bin/env bash
# `make run`: serves the API on a local Redis and PostgreSQL, with the outbox
# writer beside it, for a person trying the service out.
# Starts its own redis-server (data in .run/redis, AOF on) unless
# COUPONSVC_REDIS_URL names one, and its own PostgreSQL (data in .run/pg, as
# the `postgres` user when run as root) unless COUPONSVC_DATABASE_URL names
# one. On exit it stops exactly what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

run_dir="$PWD/.run"
mkdir -p "$run_dir/redis"
started=()
cleanup() {
  for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${started[@]}"; do while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; done
}
trap cleanup EXIT

if [ ! -s "$run_dir/jwt-secret" ]; then
  .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(48))' > "$run_dir/jwt-secret"
  chmod 600 "$run_dir/jwt-secret"
fi
export COUPONSVC_JWT_SECRET="${COUPONSVC_JWT_SECRET:-$(cat "$run_dir/jwt-secret")}"
export COUPONSVC_HOST="${COUPONSVC_HOST:-127.0.0.1}"
export COUPONSVC_PORT="${COUPONSVC_PORT:-8000}"

if [ -z "${COUPONSVC_REDIS_URL:-}" ]; then
  port="${REDIS_PORT:-6379}"
  if redis-cli -p "$port" ping >/dev/null 2>&1; then
    echo "using the Redis already listening on 127.0.0.1:$port"
  else
    redis-server --port "$port" --bind 127.0.0.1 --dir "$run_dir/redis" \
      --appendonly yes --appendfsync everysec --auto-aof-rewrite-percentage 400 \
      --rdbcompression no \
      --save "" --logfile "$run_dir/redis.log" &
    started+=($!)
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    echo "started redis-server on 127.0.0.1:$port (data in .run/redis)"
  fi
  export COUPONSVC_REDIS_URL="redis://127.0.0.1:$port/0"
fi

if [ -z "${COUPONSVC_DATABASE_URL:-}" ]; then
  pg_port="${PG_PORT:-5433}"
  pg_bin="$(dirname "$(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -1)")"
  as_pg=()
  if [ "$(id -u)" -eq 0 ]; then as_pg=(runuser -u postgres --); fi
  if [ ! -d "$run_dir/pg/data" ]; then
    mkdir -p "$run_dir/pg"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$run_dir/pg"
    "${as_pg[@]}" "$pg_bin/initdb" -D "$run_dir/pg/data" -U postgres -A trust -E UTF8 >/dev/null
  fi
  # shared_buffers: Postgres's default 128 MB is less than the rows and indexes
  # of a few million codes (docs/deployment.md, "Data stores").
  "${as_pg[@]}" "$pg_bin/postgres" -D "$run_dir/pg/data" -p "$pg_port" -k "$run_dir/pg" \
    -c listen_addresses=127.0.0.1 -c shared_buffers=1GB >>"$run_dir/pg/postgres.log" 2>&1 &
  started+=($!)
  for _ in $(seq 100); do
    "$pg_bin/pg_isready" -h 127.0.0.1 -p "$pg_port" -q && break; sleep 0.1
  done
  echo "started PostgreSQL on 127.0.0.1:$pg_port (data in .run/pg)"
  export COUPONSVC_DATABASE_URL="postgresql://postgres@127.0.0.1:$pg_port/postgres"
fi

.venv/bin/couponsvc migrate
.venv/bin/couponsvc writer >>"$run_dir/writer.log" 2>&1 &
started+=($!)
echo "started the outbox writer (log in .run/writer.log)"

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
