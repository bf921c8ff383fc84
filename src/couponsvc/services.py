"""What the handlers share for the life of the process, built in the lifespan."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from couponsvc.auth import TokenVerifier
from couponsvc.books import Books
from couponsvc.coupons import Coupons
from couponsvc.settings import Settings

READINESS_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    redis: Redis
    verifier: TokenVerifier
    books: Books
    coupons: Coupons
    openapi: bytes

    async def readiness(self) -> dict[str, str]:
        """Each backing store's state: 'ok' or why not."""
        try:
            async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
                await self.redis.ping()
            redis_state = "ok"
        except (RedisError, TimeoutError) as exc:
            redis_state = f"unavailable: {type(exc).__name__}"
        return {"redis": redis_state}
