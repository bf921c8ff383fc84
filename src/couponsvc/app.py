"""The application factory: `create_app(settings)`; clients live in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.routing import Route

from couponsvc import openapi
from couponsvc.auth import TokenVerifier
from couponsvc.books import Books
from couponsvc.coupons import Coupons
from couponsvc.errors import exception_handlers
from couponsvc.routes import OPERATIONS
from couponsvc.routes import openapi as openapi_endpoint
from couponsvc.scripts import Scripts
from couponsvc.services import Services
from couponsvc.settings import Settings
from couponsvc.store import Store

log = logging.getLogger("couponsvc")


class State(TypedDict):
    services: Services


def connect_redis(settings: Settings) -> Redis:
    # Short timeouts: a Redis outage answers 503 quickly instead of hanging.
    return Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        health_check_interval=30,
    )


def create_app(settings: Settings) -> Starlette:
    document = openapi.encoded(OPERATIONS)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[State]:
        redis = connect_redis(settings)
        try:
            scripts = Scripts(redis)
            try:
                await scripts.load()
            except RedisError as exc:
                # Not fatal: a script missing on the server is loaded on first use.
                log.warning("could not register scripts at start-up: %s", exc)
            store = Store(redis, scripts, settings)
            yield {"services": Services(
                settings=settings,
                redis=redis,
                verifier=TokenVerifier(settings),
                books=Books(store),
                coupons=Coupons(store),
                openapi=document,
            )}
        finally:
            await redis.aclose()

    routes = [Route(op.path, op.endpoint, methods=[op.method]) for op in OPERATIONS]
    routes.append(Route("/openapi.json", openapi_endpoint, methods=["GET"]))
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=exception_handlers())
