"""What the API checks of its Redis when it starts."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from couponsvc.app import warn_unless_noeviction

from .conftest import Service

pytestmark = pytest.mark.integration


@pytest.fixture
async def evicting(service: Service) -> AsyncIterator[Redis]:
    """The test's Redis (one server, or every node of the cluster) set to evict
    keys under memory pressure, and set back afterwards."""
    redis = service.redis
    await redis.config_set("maxmemory-policy", "volatile-lru")
    try:
        yield redis
    finally:
        await redis.config_set("maxmemory-policy", "noeviction")


async def test_a_redis_that_may_evict_keys_is_warned_about(
        evicting: Redis, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="couponsvc"):
        await warn_unless_noeviction(evicting)

    [warning] = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert warning.startswith("Redis's maxmemory-policy is volatile-lru:")
    assert "set it to noeviction" in warning


async def test_noeviction_is_not_warned_about(service: Service,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="couponsvc"):
        await warn_unless_noeviction(service.redis)

    assert [r for r in caplog.records if "maxmemory-policy" in r.getMessage()] == []
