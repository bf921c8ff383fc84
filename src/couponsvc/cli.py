"""The `couponsvc` command: serve the API, print a token for local use, run the
writer, and the operator tools that compare or rebuild Redis from Postgres."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from couponsvc import db
from couponsvc.settings import Settings, SettingsError
from couponsvc.writer import WriterConfig

# A command that could not reach (or log into) Redis or Postgres exits with this:
# apart from verify's 1 (the two differ), inspect's 1 (unknown) and the 2 of
# a usage or settings error.
EXIT_UNREACHABLE = 3
# How long an operator tool waits for Postgres to accept it (asyncpg: 60 s).
CONNECT_SECONDS = 10
# What Postgres raises when it cannot be reached or logged into (not a bug).
_POSTGRES_UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresConnectionError,
                         asyncpg.InvalidAuthorizationSpecificationError,
                         asyncpg.InvalidCatalogNameError, asyncpg.CannotConnectNowError)


class Unreachable(Exception):
    """Redis or Postgres could not be reached or logged into."""


def _serve(settings: Settings, _: argparse.Namespace) -> int:
    import uvicorn

    from couponsvc.app import create_app
    from couponsvc.serving import DeadlineHttpToolsProtocol

    # Several workers: uvicorn binds the port, then starts processes that each
    # import the app by name and build it from the environment. SIGTERM to this
    # process stops every worker, each with the same graceful timeout.
    many = settings.workers > 1
    uvicorn.run(
        "couponsvc.app:create_app_from_env" if many else create_app(settings, serving=True),
        factory=many,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # httptools, with deadlines for each request's head and body (serving.py).
        http=DeadlineHttpToolsProtocol,
        timeout_keep_alive=settings.keep_alive_seconds,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return 0


def _token(settings: Settings, args: argparse.Namespace) -> int:
    import time

    from couponsvc.auth import LATEST_EXP, is_unicode, issue_token

    # Refuse what the API would refuse, rather than print a token it will not take.
    if not args.sub or not is_unicode(args.sub) or not is_unicode(args.scope):
        return _usage_error("--sub must be a non-empty UTF-8 string (and --scope UTF-8)")
    if not 1 <= args.ttl <= LATEST_EXP - int(time.time()):
        return _usage_error(f"--ttl must be from 1 to {LATEST_EXP - int(time.time())} seconds")
    if settings.jwt_public_key:
        return _usage_error("tokens can be issued only with a shared secret (COUPONSVC_JWT_SECRET,"
                            " HS256); this service verifies with a public key")
    print(issue_token(settings, args.sub, args.scope, args.ttl))
    return 0


def _migrate(settings: Settings, _: argparse.Namespace) -> int:
    async def run() -> list[str]:
        conn = await _connect_postgres(settings)
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
    from couponsvc.coalesce import Coalescer, Replicas
    from couponsvc.keys import Keys
    from couponsvc.metrics import WriterMetrics
    from couponsvc.runtime import tune_gc
    from couponsvc.scripts import Scripts
    from couponsvc.writer import Writer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    registry = CollectorRegistry()
    metrics = WriterMetrics(registry)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=settings.host, registry=registry)

    async def run() -> None:
        redis = connect_redis(settings)
        config = writer_config(args)
        # A connection per batch in flight, and one to park a poison event.
        pool = await db.connect(_database_url(settings), min_size=0,
                                max_size=config.parallel_batches + 1)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # Its sweep of ended locks changes state: confirmed by replicas like the API's changes.
        scripts = Scripts(redis, Coalescer(redis, replicas=Replicas.configured(settings)))
        writer = Writer(redis, pool, Keys(settings.key_prefix), config, metrics, scripts)
        tune_gc()
        try:
            if args.drain:
                # The pool connects lazily: with nothing pending, a drain would
                # never touch Postgres and report success with it down.
                await (await _connect_postgres(settings)).close()
                await writer.drain()
            else:
                await writer.run(stop)
        finally:
            await redis.aclose()
            await pool.close()

    asyncio.run(run())
    return 0


@asynccontextmanager
async def _clients(settings: Settings) -> AsyncIterator[tuple[Redis, asyncpg.Connection]]:
    """One Redis client and one Postgres connection, for the operator tools."""
    from couponsvc.app import connect_redis

    conn = await _connect_postgres(settings)
    redis = connect_redis(settings)
    try:
        yield redis, conn
    finally:
        await redis.aclose()
        await conn.close()


def writer_config(args: argparse.Namespace) -> WriterConfig:
    """The writer's tuning from `couponsvc writer`'s options (their defaults are
    WriterConfig's)."""
    return WriterConfig(batch_size=args.batch_size, parallel_batches=args.parallel_batches,
                        claim_idle_ms=args.claim_idle_ms, linger_s=args.linger_ms / 1000)


def _rebuild(settings: Settings, args: argparse.Namespace) -> int:
    from couponsvc.keys import Keys
    from couponsvc.rebuild import NOT_RESTORED, RedisNotEmpty, rebuild

    async def run() -> int:
        async with _clients(settings) as (redis, conn):
            try:
                summary = await rebuild(redis, conn, Keys(settings.key_prefix), force=args.force)
            except RedisNotEmpty as exc:
                print(f"couponsvc: {exc}", file=sys.stderr)
                return 2
        print(summary)
        print(NOT_RESTORED)
        return 0

    return asyncio.run(run())


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from couponsvc.keys import Keys
    from couponsvc.verify import report

    async def run() -> int:
        async with _clients(settings) as (redis, conn):
            return await report(redis, conn, Keys(settings.key_prefix), limit=args.limit)

    return asyncio.run(run())


def _inspect(settings: Settings, args: argparse.Namespace) -> int:
    from couponsvc.inspect import inspect_book, inspect_code
    from couponsvc.keys import Keys

    if (args.code is None) == (args.book is None):
        print("couponsvc inspect: give a CODE or --book ID (not both)", file=sys.stderr)
        return 2

    async def run() -> str | None:
        keys = Keys(settings.key_prefix)
        async with _clients(settings) as (redis, conn):
            if args.book is not None:
                return await inspect_book(redis, conn, keys, args.book)
            return await inspect_code(redis, conn, keys, args.code)

    text = asyncio.run(run())
    if text is None:
        what = f"book {args.book}" if args.book is not None else f"code {args.code}"
        print(f"couponsvc: {what} is unknown to both Redis and Postgres", file=sys.stderr)
        return 1
    print(text)
    return 0


def _upload(_: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from couponsvc.upload import UploadError, summary, upload

    token = args.token or os.environ.get("COUPONSVC_TOKEN", "")
    if not token:
        return _usage_error("pass --token or set COUPONSVC_TOKEN (an admin token)")
    try:
        totals = upload(args.url or _local_url(), token, args.book, Path(args.file), args.chunk)
    except UploadError as exc:
        raise SystemExit(f"couponsvc: {exc}") from None
    print(summary(totals))
    return 0


def _usage_error(message: str) -> int:
    print(f"couponsvc: {message}", file=sys.stderr)
    return 2


def _local_url() -> str:
    """Where `couponsvc serve` with this environment listens (0.0.0.0: here)."""
    host = os.environ.get("COUPONSVC_HOST", "").strip() or "127.0.0.1"
    port = os.environ.get("COUPONSVC_PORT", "").strip() or "8000"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _database_url(settings: Settings) -> str:
    """The Postgres URL; a missing one is a settings error (exit 2, as a
    malformed one is), never verify's 1, "the two differ"."""
    if not settings.database_url:
        raise SystemExit(_usage_error("set COUPONSVC_DATABASE_URL"))
    return settings.database_url


def _whole(text: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
    return value


def _positive(text: str) -> int:
    return _whole(text, 1)


def _not_negative(text: str) -> int:
    return _whole(text, 0)


def _port_or_off(text: str) -> int:
    return _whole(text, 0, 65535)


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
    defaults = WriterConfig()
    writer.add_argument("--batch-size", type=_positive, default=defaults.batch_size,
                        help="events per transaction at most (%(default)s)")
    writer.add_argument("--parallel-batches", type=_positive, default=defaults.parallel_batches,
                        help="batches of one stream in flight at once while it is behind "
                             "(%(default)s)")
    writer.add_argument("--linger-ms", type=_not_negative,
                        default=round(defaults.linger_s * 1000),
                        help="after a pass that found less than a full batch, wait this "
                             "long for more (fewer, larger transactions) (%(default)s)")
    writer.add_argument("--claim-idle-ms", type=_positive, default=defaults.claim_idle_ms,
                        help="reclaim entries another writer left unacknowledged this long "
                             "(%(default)s)")
    writer.add_argument("--metrics-port", type=_port_or_off, default=0,
                        help="serve Prometheus metrics on this port (0: off)")
    writer.add_argument("--drain", action="store_true",
                        help="apply everything now in the streams, then exit")
    writer.set_defaults(run=_writer)
    upload = commands.add_parser("upload", help="stream a file of codes to a running service")
    upload.add_argument("file", help="one code per line, or CSV with the code first")
    upload.add_argument("--book", required=True, help="the coupon book id")
    upload.add_argument("--url", default="",
                        help="the service's base URL (default: http://COUPONSVC_HOST:"
                             "COUPONSVC_PORT, as `couponsvc serve` here would listen)")
    upload.add_argument("--token", default="", help="admin token (default: $COUPONSVC_TOKEN)")
    upload.add_argument("--chunk", type=_positive, default=100_000, help="codes per request")
    upload.set_defaults(run=_upload)
    rebuild = commands.add_parser(
        "rebuild", help="rebuild the Redis state from Postgres (a lost or new Redis)")
    rebuild.add_argument("--force", action="store_true",
                         help="write even though Redis already holds books")
    rebuild.set_defaults(run=_rebuild)
    verify = commands.add_parser(
        "verify", help="list every difference between Redis and Postgres (drain first)")
    verify.add_argument("--limit", type=_not_negative, default=0,
                        help="stop after this many differences (0: list all)")
    verify.set_defaults(run=_verify)
    inspect = commands.add_parser(
        "inspect", help="show one code or book as Redis and Postgres each hold it")
    inspect.add_argument("code", nargs="?", help="a coupon code")
    inspect.add_argument("--book", help="a book id (or number) instead of a code")
    inspect.set_defaults(run=_inspect)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    try:
        _main(argv)
    except KeyboardInterrupt:
        print("couponsvc: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:  # `couponsvc verify | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except (Unreachable, RedisConnectionError, RedisTimeoutError) as exc:
        # An outage or a wrong address, not a bug: one line, not a traceback.
        where = "" if isinstance(exc, Unreachable) else "cannot reach Redis: "
        print(f"couponsvc: {where}{exc}", file=sys.stderr)
        raise SystemExit(EXIT_UNREACHABLE) from None


async def _connect_postgres(settings: Settings) -> asyncpg.Connection:
    url = _database_url(settings)
    try:
        conn: asyncpg.Connection = await asyncpg.connect(url, timeout=CONNECT_SECONDS)
    except _POSTGRES_UNREACHABLE as exc:
        where = urlsplit(url).netloc.rpartition("@")[2] or "its default host"
        raise Unreachable(f"cannot reach Postgres at {where}: "
                          f"{type(exc).__name__}: {exc}") from None
    return conn


def _main(argv: Sequence[str] | None) -> None:
    args = parser().parse_args(argv)
    if args.run is _upload:  # a client of a running service: no server settings needed
        raise SystemExit(_upload(Settings(env="dev"), args))
    try:
        settings = Settings.from_env(uses_jwt_key=args.run in (_serve, _token),
                                     serves_api=args.run is _serve)
    except SettingsError as exc:
        print(f"couponsvc: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(args.run(settings, args))
