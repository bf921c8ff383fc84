"""A lock that runs out reaches Postgres, even when nothing else happens in its book."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from couponsvc import errors
from couponsvc.schemas import CreateBook

from .conftest import OPS, Service

pytestmark = pytest.mark.integration


async def test_a_lock_that_ends_with_its_book_is_recorded(service: Service) -> None:
    """After validUntil no lock or redeem can run in the book, and those were
    what recorded ended locks: Postgres showed the code locked for good."""
    ends = datetime.now(UTC) + timedelta(seconds=3)  # time to make, assign and lock
    book = await service.books.create(CreateBook(name="Ending", validUntil=ends,
                                                 initialCouponAmount=2))
    code = (await service.coupons.assign_random(OPS, book.id, "erin", None)).coupon.code
    lock, _ = await service.coupons.lock(OPS, code, "erin", 60)  # ends with the book
    await service.drain()
    await asyncio.sleep((lock.lockedUntil - datetime.now(UTC)).total_seconds() + 0.1)
    with pytest.raises(errors.BookNotActive):
        await service.coupons.lock(OPS, code, "erin", None)

    await service.drain()

    async with service.pool.acquire() as conn:
        trail = await conn.fetch("SELECT type, version, at FROM events WHERE code = $1"
                                 " ORDER BY version", code)
        row_version = await conn.fetchval("SELECT version FROM codes WHERE code = $1", code)
    assert [(r["type"], r["version"]) for r in trail] == [
        ("assigned", 1), ("locked", 2), ("lock_expired", 3)]
    assert trail[-1]["at"] == lock.lockedUntil  # when it ended, not when it was noticed
    assert row_version == 3
    number = await service.number(book.id)
    assert await service.redis.zcard(service.keys.book(number).locks) == 0
    assert await service.verify() == []


async def test_every_lock_key_ends_exactly_when_its_zset_entry_says(service: Service) -> None:
    """The sweep records an entry once its score has passed: a key that
    outlived its score by a millisecond (PX counted from when SET ran) had
    its lock recorded as ended while its token still redeemed."""
    book = await service.books.create(CreateBook(name="Deadlines", initialCouponAmount=3000))
    number = await service.number(book.id)
    keys = service.keys.book(number)
    codes = list(await service.redis.smembers(keys.free))
    await asyncio.gather(*(service.coupons.assign_code(OPS, c, "erin", None, None)
                           for c in codes))

    await asyncio.gather(*(service.coupons.lock(OPS, c, "erin", 600) for c in codes))

    scores = dict(await service.redis.zrange(keys.locks, 0, -1, withscores=True))
    async with service.redis.pipeline(transaction=False) as pipe:
        for code in codes:
            pipe.pexpiretime(keys.lock(code))
        deadlines = await pipe.execute()
    late = {c: (d, scores[c]) for c, d in zip(codes, deadlines, strict=True) if d != scores[c]}
    assert len(scores) == len(codes)
    assert late == {}
