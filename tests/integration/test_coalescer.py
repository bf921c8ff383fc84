"""The auto-pipelining layer against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from couponsvc.coalesce import Coalescer

from .support import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path).start()
    yield redis
    redis.stop()


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(server.url, decode_responses=True, socket_timeout=1,
                           socket_connect_timeout=1)
    yield redis
    await redis.aclose()


async def test_concurrent_commands_share_batches_and_keep_their_order(client: Redis) -> None:
    coalescer = Coalescer(client)
    sent: list[int] = []
    original = client.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        sent.append(1)
        return original(*args, **kwargs)

    client.pipeline = counting_pipeline  # type: ignore[method-assign]
    replies = await asyncio.gather(*(coalescer.execute("INCR", "counter") for _ in range(500)))

    assert sorted(replies) == list(range(1, 501))
    assert replies == sorted(replies)  # queued order is the order Redis ran them
    assert len(sent) <= 500 // 256 + 2  # a few batches, not one round trip per command


async def test_an_error_reply_fails_only_its_own_command(client: Redis) -> None:
    coalescer = Coalescer(client)
    await client.set("text", "not a number")

    results = await asyncio.gather(
        coalescer.execute("INCR", "n"),
        coalescer.execute("INCR", "text"),
        coalescer.execute("INCR", "n"),
        return_exceptions=True,
    )

    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], ResponseError)


async def test_options_reach_reply_parsing(client: Redis) -> None:
    coalescer = Coalescer(client)

    first = await coalescer.execute("SET", "k", "v1", "NX", "GET", get=True)
    second = await coalescer.execute("SET", "k", "v2", "NX", "GET", get=True)

    assert first is None and second == "v1"


async def test_a_dead_server_fails_every_waiting_command_then_service_resumes(
    server: RedisServer, client: Redis
) -> None:
    coalescer = Coalescer(client)
    assert await coalescer.execute("PING") is True
    server.kill()

    results = await asyncio.wait_for(
        asyncio.gather(*(coalescer.execute("INCR", "n") for _ in range(20)),
                       return_exceptions=True),
        timeout=10,
    )
    assert all(isinstance(r, ConnectionError | TimeoutError) for r in results), results

    server.start()  # same port: the client reconnects by itself
    assert await coalescer.execute("INCR", "n") == 1


async def test_a_paused_server_times_out_instead_of_hanging(
    server: RedisServer, client: Redis
) -> None:
    coalescer = Coalescer(client)
    await coalescer.execute("PING")
    server.pause()
    try:
        with pytest.raises((TimeoutError, ConnectionError)):
            await asyncio.wait_for(coalescer.execute("PING"), timeout=10)
    finally:
        server.resume()


async def test_a_cancelled_caller_does_not_disturb_the_batch(client: Redis) -> None:
    coalescer = Coalescer(client)
    cancelled = asyncio.ensure_future(coalescer.execute("INCR", "c"))
    kept = asyncio.ensure_future(coalescer.execute("INCR", "c"))
    await asyncio.sleep(0)
    cancelled.cancel()

    assert await kept in (1, 2)
    assert await client.get("c") in ("1", "2")
