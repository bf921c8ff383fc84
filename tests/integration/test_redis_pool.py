"""The API's Redis client under more concurrent calls than its pool holds."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from couponsvc.app import REDIS_MAX_CONNECTIONS, connect_redis
from couponsvc.settings import Settings

from .servers import RedisServer

pytestmark = pytest.mark.integration

HOLD_SECONDS = 0.3


@pytest.fixture(scope="module")
def single_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("pool-redis"))).start()
    yield server
    server.stop()


async def test_calls_past_the_pool_wait_for_a_connection(single_redis: RedisServer) -> None:
    """Half again as many calls as the pool has connections, each holding its
    connection for a while (BLPOP on an empty list): the extra ones wait for a
    free connection and succeed, instead of failing with "Too many connections"."""
    redis = connect_redis(Settings(redis_url=single_redis.url, redis_timeout_seconds=5.0))
    empty = f"pool-test:{uuid.uuid4().hex}"
    try:
        replies = await asyncio.gather(
            *(redis.blpop([empty], timeout=HOLD_SECONDS)
              for _ in range(REDIS_MAX_CONNECTIONS * 3 // 2)))
    finally:
        await redis.aclose()
    assert replies == [None] * (REDIS_MAX_CONNECTIONS * 3 // 2)


async def test_a_call_that_waits_too_long_for_a_connection_is_a_connection_error(
        single_redis: RedisServer) -> None:
    """The wait lasts the Redis timeout, no less (the pool waited) and not
    much more (no hang), and ends as a connection error (the API's 503)."""
    redis = connect_redis(Settings(redis_url=single_redis.url, redis_timeout_seconds=0.2))
    pool = redis.connection_pool
    try:
        held = [await pool.get_connection() for _ in range(REDIS_MAX_CONNECTIONS)]
        started = time.monotonic()
        with pytest.raises(RedisConnectionError) as refused:
            await redis.ping()
        waited = time.monotonic() - started
        assert not isinstance(refused.value, MaxConnectionsError)
        assert 0.2 <= waited < 1.0
        for connection in held:
            await pool.release(connection)
        assert await redis.ping() is True
    finally:
        await redis.aclose()
