"""The writer's cost follows traffic, not the number of books: quiet books are
read less often and their locks looked at only when one may have ended, yet
every event and every lock's end still reaches Postgres.

Counts come from the test's own redis-server (INFO commandstats), so these
run on one Redis only; the writer's pipelined reads run on the cluster in
every other test of this folder.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, cast

import pytest
import redis as redis_sync

from couponsvc import writer as writer_module
from couponsvc.app import connect_redis
from couponsvc.keys import Keys
from couponsvc.outbox import GROUP
from couponsvc.schemas import CreateBook
from couponsvc.settings import Settings
from couponsvc.writer import Writer, WriterConfig
from support.cluster import RedisCluster

from .conftest import OPS, Service

pytestmark = pytest.mark.integration
QUIET_BOOKS = 60


@pytest.fixture
def redis_target(redis_url: str) -> tuple[str, bool]:
    return redis_url, False


@asynccontextmanager
async def running(writer: Writer) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    try:
        yield
    finally:
        stop.set()
        await task


def new_writer(service: Service, **config: float) -> Writer:
    return Writer(service.redis, service.pool, service.keys, WriterConfig(**config))


async def calls(service: Service) -> dict[str, int]:
    stats = await service.redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}


async def lock_expired_at(service: Service, code: str) -> datetime | None:
    async with service.pool.acquire() as conn:
        at: datetime | None = await conn.fetchval(
            "SELECT at FROM events WHERE code = $1 AND type = 'lock_expired'", code)
        return at


async def test_quiet_books_are_read_and_swept_less_often_than_busy_ones(
        service: Service) -> None:
    for n in range(QUIET_BOOKS):
        await service.books.create(CreateBook(name=f"Quiet {n}", initialCouponAmount=1))
    busy = await service.books.create(CreateBook(name="Busy", initialCouponAmount=500))
    await service.drain()
    await service.redis.config_resetstat()
    assigned: list[str] = []

    async with running(new_writer(service, quiet_read_max_s=0.5)):
        started = time.monotonic()
        while time.monotonic() - started < 2.5:
            outcome = await service.coupons.assign_random(OPS, busy.id, f"u{len(assigned)}", None)
            assigned.append(outcome.coupon.code)
            await asyncio.sleep(0.02)
        counted = await calls(service)
    await service.drain()

    books = QUIET_BOOKS + 1
    # Reading every book on every pass (20 ms apart) came to ~100 reads a book
    # here; a quiet book waits a tenth of its silence between reads (at least
    # 20 ms, at most 500): about 25 reads in its first 2.5 s.
    assert counted["xreadgroup"] < books * 30
    # Sweeping every book every second came to 3 sweeps a book; now one at
    # start, then only the busy book (its events could be new locks).
    sweeps = counted["evalsha"] - len(assigned)
    assert books <= sweeps <= books + 6
    async with service.pool.acquire() as conn:
        written = await conn.fetchval(
            "SELECT count(*) FROM events e JOIN books b ON b.id = e.book_id"
            " WHERE b.name = 'Busy' AND e.type = 'assigned'")
    assert written == len(assigned)


async def test_a_lock_taken_while_the_writer_runs_is_recorded_when_it_ends(
        service: Service) -> None:
    """Its event makes the book due for a sweep, and that sweep learns when
    the lock ends: nothing else in the book happens meanwhile."""
    book = await service.books.create(CreateBook(name="Checkout", initialCouponAmount=2))
    code = (await service.coupons.assign_random(OPS, book.id, "erin", None)).coupon.code
    await service.drain()

    async with running(new_writer(service)):
        await asyncio.sleep(0.3)  # the writer's first full sweep has come and gone
        lock, _ = await service.coupons.lock(OPS, code, "erin", 3)
        deadline = time.monotonic() + 3 + 2.5  # the lock, a sweep interval, slack
        while (ended := await lock_expired_at(service, code)) is None \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    assert ended == lock.lockedUntil


async def test_a_lock_applied_by_an_earlier_writer_is_recorded_by_the_next(
        service: Service) -> None:
    """A writer starts by sweeping every book once, and so learns of locks
    whose events an earlier writer applied."""
    book = await service.books.create(CreateBook(name="Handover", initialCouponAmount=2))
    code = (await service.coupons.assign_random(OPS, book.id, "erin", None)).coupon.code
    lock, _ = await service.coupons.lock(OPS, code, "erin", 2)
    await service.drain()  # the earlier writer: the locked event is in Postgres

    async with running(new_writer(service)):
        deadline = time.monotonic() + 2 + 2.5
        while (ended := await lock_expired_at(service, code)) is None \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    assert ended == lock.lockedUntil


async def assigned_in_postgres(service: Service, book_id: str) -> int:
    async with service.pool.acquire() as conn:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM events WHERE book_id = $1 AND type = 'assigned'", book_id)
        return count


async def test_looking_for_work_takes_a_few_entries_of_each_book_not_a_batch(
        service: Service) -> None:
    """Thousands of books with a backlog each (after an outage) must not all
    be read into memory at once: only the drain reads a batch, a book at a time."""
    books = [await service.books.create(CreateBook(name=f"Backlog {n}", initialCouponAmount=60))
             for n in range(3)]
    for book in books:
        for n in range(50):
            await service.coupons.assign_random(OPS, book.id, f"u{n}", None)
    writer = new_writer(service, batch_size=2000)
    numbers = [await service.number(book.id) for book in books]

    assert await writer._books_with_work(numbers) == numbers

    for number in numbers:
        pending = await service.redis.xpending(service.keys.book(number).events, GROUP)
        assert pending["pending"] == writer_module.PROBE_COUNT


async def test_a_book_whose_stream_redis_refuses_does_not_hold_up_the_others(
        service: Service) -> None:
    broken, fine = [await service.books.create(CreateBook(name=name, initialCouponAmount=2))
                    for name in ("Broken", "Fine")]
    await service.drain()
    for book in (broken, fine):
        await service.coupons.assign_random(OPS, book.id, "erin", None)
    stream = service.keys.book(await service.number(broken.id)).events
    await service.redis.delete(stream)
    await service.redis.set(stream, "not a stream")  # every read of it: WRONGTYPE
    writer = new_writer(service)

    await writer.step()

    assert await assigned_in_postgres(service, fine.id) == 1


async def test_our_own_backlog_longer_than_a_batch_is_read_again_until_it_is_done(
        service: Service) -> None:
    """Entries left unacknowledged by failed batches (Postgres refused them
    for now) can be several batches long: the writer goes on reading its own
    until they run out, rather than leaving the rest to XAUTOCLAIM."""
    book = await service.books.create(CreateBook(name="Refused", initialCouponAmount=40))
    await service.drain()
    for n in range(30):
        await service.coupons.assign_random(OPS, book.id, f"u{n}", None)
    writer = new_writer(service, batch_size=10, claim_idle_ms=600_000)
    stream = service.keys.book(await service.number(book.id)).events
    # What failed batches leave behind: 30 entries delivered to this writer.
    await service.redis.xreadgroup(GROUP, writer.config.consumer, {stream: ">"}, count=30)
    writer._retry_own.add(stream)

    for _ in range(4):
        await writer.step()

    assert await assigned_in_postgres(service, book.id) == 30
    assert (await service.redis.xpending(stream, GROUP))["pending"] == 0


async def test_on_a_cluster_looking_for_work_asks_no_node_where_a_key_lives(
        redis_cluster: RedisCluster) -> None:
    """redis-py finds XREADGROUP's key by asking a node (COMMAND GETKEYS),
    one round trip a command, unless the command names its node."""
    settings = Settings(env="dev", redis_url=redis_cluster.url, redis_cluster=True)
    redis = connect_redis(settings)
    keys = Keys("getkeys")
    numbers = list(range(1, 51))
    try:
        for number in numbers:
            await redis.xadd(keys.book(number).events, {"type": "probe"})
        writer = Writer(redis, cast(Any, None), keys, WriterConfig(consumer="probe"))

        before = getkeys_calls(redis_cluster)
        assert await writer._books_with_work(numbers) == numbers
        assert getkeys_calls(redis_cluster) == before
    finally:
        for number in numbers:
            await redis.delete(keys.book(number).events)
        await redis.aclose()


def getkeys_calls(cluster: RedisCluster) -> int:
    total = 0
    for port in cluster.ports:
        with redis_sync.Redis(port=port) as node:
            stat = node.info("commandstats").get("cmdstat_command|getkeys", {})
            total += int(stat.get("calls", 0))
    return total
