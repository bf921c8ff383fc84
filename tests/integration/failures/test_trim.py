"""The writer trims from a stream only the entries its group acknowledged:
entries delivered but not acknowledged stay, acknowledged ones go."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from couponsvc import db
from couponsvc.keys import Keys
from couponsvc.outbox import GROUP
from couponsvc.writer import Writer, WriterConfig, trim_acknowledged

from ..api_client import Api
from .harness import Durable, differences, stream_of
from .load import churn

pytestmark = pytest.mark.integration

STALLED = "stalled-writer"  # a consumer that read entries and then died


@pytest.fixture
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    connections = await db.connect(pg_url, min_size=1, max_size=2)
    try:
        yield connections
    finally:
        await connections.close()


async def ids(redis: Redis, stream: str) -> list[str]:
    return [entry_id for entry_id, _ in await redis.xrange(stream)]


async def test_only_acknowledged_entries_are_trimmed(
        stack: Durable, api: Api, redis: Redis, pool: asyncpg.Pool,
        conn: asyncpg.Connection) -> None:
    book, codes = await api.book_with_codes(130)
    stream = await stream_of(redis, book["id"])
    await churn(api, codes)
    written = await ids(redis, stream)
    assert len(written) > 250  # several of Redis's stream nodes (100 entries each)

    # The writer, in this process, trimming on every pass; it reclaims nothing,
    # and applies one batch per pass, so the test knows where it stands.
    config = WriterConfig(batch_size=150, parallel_batches=1, batches_per_pass=1,
                          claim_idle_ms=3_600_000, trim_interval_s=0, consumer="live-writer")
    writer = Writer(redis, pool, Keys("cb"), config)
    assert await writer.step() == 150  # applies and acknowledges the first 150
    held = await redis.xreadgroup(GROUP, STALLED, {stream: ">"}, count=10)
    held_ids = [entry_id for entry_id, _ in held[0][1]]
    assert held_ids == written[150:160]
    while await writer.step():  # the rest, around the held entries
        pass

    kept = await ids(redis, stream)
    assert set(written[150:]) <= set(kept), "entries at or after the oldest unacknowledged went"
    assert len(kept) < len(written), "no acknowledged entry was trimmed"
    assert kept == written[len(written) - len(kept):], "the stream lost entries in its middle"
    pending = await redis.xpending_range(stream, GROUP, "-", "+", 100)
    assert [p["message_id"] for p in pending] == held_ids

    # The stalled consumer's entries are reclaimed once idle, applied and acknowledged.
    await asyncio.sleep(0.05)
    writer.config.claim_idle_ms = 10
    while await writer.step():
        pass
    assert (await redis.xpending(stream, GROUP))["pending"] == 0
    await writer.step()  # one more pass trims what is now acknowledged
    assert await redis.xlen(stream) == 0
    assert await differences(redis, conn, book["id"]) == []
    assert await conn.fetchval("SELECT count(*) FROM events") == len(written)


async def test_a_long_acknowledged_stretch_is_trimmed_in_one_pass(redis: Redis) -> None:
    # More entries than one approximate trim removes (10,000 with Redis's
    # default node size): a busy book writes that many between two trims.
    stream = "cb:{book:99}:events"
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(25_000):
            pipe.xadd(stream, {"type": "test", "n": str(n)})
        await pipe.execute()
    delivered = await redis.xreadgroup(GROUP, "trimmer", {stream: ">"}, count=30_000)
    entry_ids = [entry_id for entry_id, _ in delivered[0][1]]
    await redis.xack(stream, GROUP, *entry_ids[:24_000])

    await trim_acknowledged(redis, stream)

    assert await ids(redis, stream) == entry_ids[24_000:]
