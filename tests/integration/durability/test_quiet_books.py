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

import pytest

from couponsvc.schemas import CreateBook
from couponsvc.writer import Writer, WriterConfig

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
    # here; a quiet book is read after 20, 40, ... ms, then every 500 ms.
    assert counted["xreadgroup"] < books * 14
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
