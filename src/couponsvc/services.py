"""What the handlers share for the life of the process, built in the lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass

import asyncpg
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from couponsvc.auth import TokenVerifier
from couponsvc.books import Books
from couponsvc.coupons import Coupons
from couponsvc.metrics import ApiMetrics
from couponsvc.ratelimit import AbuseGuard
from couponsvc.records import Records
from couponsvc.settings import Settings
from couponsvc.store import Store

READINESS_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    redis: Redis
    store: Store
    verifier: TokenVerifier
    books: Books
    coupons: Coupons
    records: Records | None
    openapi: bytes
    registry: CollectorRegistry
    metrics: ApiMetrics
    # None when COUPONSVC_RATE_LIMITS=off.
    guard: AbuseGuard | None = None

    async def readiness(self) -> dict[str, str]:
        """Each backing store's state: 'ok', 'disabled', or why not."""
        checks = {"redis": await _check(self.redis.ping())}
        checks["postgres"] = (await _check(self.records.ping()) if self.records is not None
                              else "disabled")
        return checks


async def _check(probe: Awaitable[object]) -> str:
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
            await probe
        return "ok"
    except (RedisError, asyncpg.PostgresError, OSError, TimeoutError) as exc:
        return f"unavailable: {type(exc).__name__}"
