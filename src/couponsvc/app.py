"""The application factory: `create_app(settings)`; clients live in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict, cast

from prometheus_client import CollectorRegistry
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from couponsvc import db, openapi
from couponsvc.auth import TokenVerifier
from couponsvc.books import Books
from couponsvc.coalesce import Coalescer, CommandPipe, Replicas
from couponsvc.coupons import Coupons
from couponsvc.errors import exception_handlers
from couponsvc.metrics import ApiMetrics, TimingMiddleware
from couponsvc.ratelimit import AbuseGuard
from couponsvc.records import Records
from couponsvc.resp import RespPipeline
from couponsvc.routes import OPERATIONS, Operation
from couponsvc.routes import metrics as metrics_endpoint
from couponsvc.routes import openapi as openapi_endpoint
from couponsvc.runtime import tune_gc
from couponsvc.scripts import Scripts
from couponsvc.services import Services
from couponsvc.settings import Settings
from couponsvc.store import Store

log = logging.getLogger("couponsvc")

# Matched first, busiest first (the route table's order is the OpenAPI document's).
CHECKOUT_OPERATIONS = ("assignRandomCoupon", "lockCoupon", "redeemCoupon",
                       "assignSpecificCoupon", "unlockCoupon", "getUserCoupons")

# redis-py's default pool size. The hot path and the abuse limits' counting
# pipeline on connections of their own (resp.py; on a cluster, batches of
# this client's pool, at most coalesce.MAX_IN_FLIGHT at once); this pool
# serves the rest: script reloads, admin calls, /metrics, and `limits`
# reading a refused caller's window.
REDIS_MAX_CONNECTIONS = 100

# How long a bulk load waits for Redis to answer before giving up (503).
BULK_TIMEOUT_SECONDS = 30.0


class State(TypedDict):
    services: Services


def connect_redis(settings: Settings) -> Redis:
    """One client for the process. With COUPONSVC_REDIS_CLUSTER it is redis-py's
    cluster client, which offers the same commands (hence the cast): every
    script call's keys share one slot, so nothing else changes."""
    if settings.redis_cluster:
        cluster = RedisCluster.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=settings.redis_timeout_seconds,
        )
        return cast(Redis, cluster)
    # Short timeouts: a Redis outage answers 503 within seconds instead of
    # hanging. A blocking pool: with all its connections busy, a call waits for
    # one (up to the same timeout, so a stalled Redis can take twice that to
    # answer 503) instead of failing at once with "Too many connections",
    # which turned a burst of 256 clients into 503s.
    return Redis.from_pool(BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=settings.redis_timeout_seconds,
        decode_responses=True,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        health_check_interval=30,
    ))


async def warn_unless_noeviction(redis: Redis) -> None:
    """Logs a warning when Redis may evict keys under memory pressure (any
    `maxmemory-policy` but `noeviction`): an evicted free set or assignment
    loses codes, an evicted lock leaves its code locked in the listings, an
    evicted idempotency record lets a retried redeem count twice. With
    noeviction a full Redis refuses writes instead (503), and loses nothing.
    A warning, not a refusal: the setting is often the provider's to change."""
    try:
        if isinstance(redis, RedisCluster):  # every node's fields, by node
            by_node = await redis.info("memory", target_nodes=RedisCluster.ALL_NODES)
            nodes = [node for node in by_node.values() if isinstance(node, dict)]
        else:
            nodes = [await redis.info("memory")]
    except RedisError as exc:
        log.warning("could not read Redis's maxmemory-policy: %s", exc)
        return
    policies = sorted({str(node.get("maxmemory_policy")) for node in nodes} - {"noeviction"})
    if policies:
        log.warning("Redis's maxmemory-policy is %s: under memory pressure it may evict "
                    "codes, assignments, locks or idempotency records; set it to "
                    "noeviction (docs/deployment.md)", ", ".join(policies))


def _checkout_first(op: Operation) -> int:
    if op.operation_id in CHECKOUT_OPERATIONS:
        return CHECKOUT_OPERATIONS.index(op.operation_id)
    return len(CHECKOUT_OPERATIONS)


def create_app_from_env() -> Starlette:
    """The factory each uvicorn worker process calls when `couponsvc serve`
    runs several (COUPONSVC_WORKERS > 1): a worker imports the app by name and
    reads its settings from the environment it inherited."""
    return create_app(Settings.from_env(), serving=True)


def create_app(settings: Settings, *, serving: bool = False) -> Starlette:
    """The app. `serving=True` (`couponsvc serve`) also tunes the process's
    garbage collector once start-up is done (runtime.py); an app hosted by
    something else, such as a test process, leaves its host's GC alone."""
    document = openapi.encoded(OPERATIONS)

    registry = CollectorRegistry()
    metrics = ApiMetrics(registry)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[State]:
        redis = connect_redis(settings)
        pool = await db.connect(settings.database_url, min_size=0) \
            if settings.database_url else None
        if pool is None:
            log.warning("no COUPONSVC_DATABASE_URL: running without a durable record")
        guard: AbuseGuard | None = None
        owned: list[RespPipeline] = []  # closed on the way out
        try:
            # The RESP client speaks to one node; a cluster uses redis-py pipelines,
            # which route each command to its slot's node.
            resp = settings.hot_path_client == "resp" and not settings.redis_cluster
            replicas = Replicas.configured(settings)
            pipe: CommandPipe = RespPipeline(settings.redis_url, settings.redis_timeout_seconds,
                                             replicas=replicas) if resp \
                else Coalescer(redis, replicas=replicas)
            # Bulk loads on a connection of their own, patient with a Redis busy
            # writing its AOF under a million-code load.
            bulk = RespPipeline(settings.redis_url, BULK_TIMEOUT_SECONDS,
                                replicas=replicas) if resp else None
            owned += [p for p in (pipe, bulk) if isinstance(p, RespPipeline)]
            scripts = Scripts(redis, pipe, bulk)
            guard = AbuseGuard(settings, redis, scripts) if settings.rate_limits else None
            try:
                await scripts.load()
            except RedisError as exc:
                # Not fatal: a script missing on the server is loaded on first use.
                log.warning("could not register scripts at start-up: %s", exc)
            await warn_unless_noeviction(redis)
            store = Store(redis, scripts, settings)
            records = Records(pool) if pool is not None else None
            if serving:
                tune_gc()
            yield {"services": Services(
                settings=settings,
                redis=redis,
                store=store,
                verifier=TokenVerifier(settings),
                books=Books(store, records),
                coupons=Coupons(store),
                records=records,
                openapi=document,
                registry=registry,
                metrics=metrics,
                guard=guard,
            )}
        finally:
            if guard is not None:
                await guard.aclose()
            for own in owned:
                await own.aclose()
            await redis.aclose()
            if pool is not None:
                await pool.close()

    # The router tries routes in order: checkout traffic's come first.
    ordered = sorted(OPERATIONS, key=_checkout_first)
    routes = [Route(op.route_path, op.endpoint, methods=[op.method]) for op in ordered]
    routes.append(Route("/openapi.json", openapi_endpoint, methods=["GET"]))
    routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    # Metrics label requests by the documented path template.
    templates = {route.endpoint: route.path for route in routes}
    templates.update({op.endpoint: op.path for op in OPERATIONS})
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=exception_handlers(),
        middleware=[Middleware(TimingMiddleware, metrics=metrics,
                               templates=templates)],
    )
    # No route ends in '/': such a path is a 404 problem, not a bodiless 307 to
    # the path without it (POST /coupons/assign/, an empty {code}, would
    # become a random assign for a client that follows redirects). Starlette
    # takes the flag on its Router only, which it builds itself.
    app.router.redirect_slashes = False
    return app
