"""The `couponsvc` command: serve the API, or print a token for local use."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

import asyncpg

from couponsvc import db
from couponsvc.settings import Settings, SettingsError


def _serve(settings: Settings, _: argparse.Namespace) -> int:
    import uvicorn

    from couponsvc.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return 0


def _token(settings: Settings, args: argparse.Namespace) -> int:
    from couponsvc.auth import issue_token

    print(issue_token(settings, args.sub, args.scope, args.ttl))
    return 0


def _migrate(settings: Settings, _: argparse.Namespace) -> int:
    async def run() -> list[str]:
        conn = await asyncpg.connect(_database_url(settings))
        try:
            return await db.migrate(conn)
        finally:
            await conn.close()

    applied = asyncio.run(run())
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return 0


def _writer(settings: Settings, args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry, start_http_server

    from couponsvc.app import connect_redis
    from couponsvc.keys import Keys
    from couponsvc.metrics import WriterMetrics
    from couponsvc.writer import Writer, WriterConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    registry = CollectorRegistry()
    metrics = WriterMetrics(registry)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=settings.host, registry=registry)

    async def run() -> None:
        redis = connect_redis(settings)
        pool = await db.connect(_database_url(settings), min_size=0, max_size=4)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        config = WriterConfig(batch_size=args.batch_size, claim_idle_ms=args.claim_idle_ms)
        writer = Writer(redis, pool, Keys(settings.key_prefix), config, metrics)
        try:
            if args.drain:
                await writer.drain()
            else:
                await writer.run(stop)
        finally:
            await redis.aclose()
            await pool.close()

    asyncio.run(run())
    return 0


def _database_url(settings: Settings) -> str:
    if not settings.database_url:
        raise SystemExit("couponsvc: set COUPONSVC_DATABASE_URL")
    return settings.database_url


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="couponsvc", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP API (uvicorn)")
    serve.set_defaults(run=_serve)
    token = commands.add_parser("token", help="print a signed bearer token (HS256 secret)")
    token.add_argument("--sub", required=True, help="the subject: a user id or a client name")
    token.add_argument("--scope", default="",
                       help='space-separated scopes, e.g. "coupons:admin coupons:write"')
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.set_defaults(run=_token)
    migrate = commands.add_parser("migrate", help="apply the Postgres migrations not yet applied")
    migrate.set_defaults(run=_migrate)
    writer = commands.add_parser("writer", help="drain the outbox streams into Postgres")
    writer.add_argument("--batch-size", type=int, default=1000)
    writer.add_argument("--claim-idle-ms", type=int, default=10_000,
                        help="reclaim entries another writer left unacknowledged this long")
    writer.add_argument("--metrics-port", type=int, default=0,
                        help="serve Prometheus metrics on this port (0: off)")
    writer.add_argument("--drain", action="store_true",
                        help="apply everything now in the streams, then exit")
    writer.set_defaults(run=_writer)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"couponsvc: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(args.run(settings, args))
