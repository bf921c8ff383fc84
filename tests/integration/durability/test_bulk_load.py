"""Bulk loads in overlapping stages (Postgres takes a chunk while Redis takes
the one before): the outcome, Postgres and Redis are the same as one stage.

The chunk size is made tiny so that a few dozen codes cross many chunk
boundaries; the service layer runs on a real Redis (one node and the
cluster) and a real Postgres.
"""

from __future__ import annotations

import asyncio

import pytest

from couponsvc import loads
from couponsvc.schemas import CreateBook

from .conftest import Service

pytestmark = pytest.mark.integration

CHUNK = 7


@pytest.fixture(autouse=True)
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loads, "LOAD_CHUNK", CHUNK)


async def postgres_codes(service: Service, book_id: str) -> set[str]:
    rows = await service.pool.fetch("SELECT code FROM codes WHERE book_id = $1", book_id)
    return {row["code"] for row in rows}


async def redis_free(service: Service, book_id: str) -> set[str]:
    number = await service.number(book_id)
    return set(await service.redis.smembers(service.keys.book(number).free))


async def test_an_upload_across_many_chunks(service: Service) -> None:
    other = await service.books.create(CreateBook(name="Other"))
    book = await service.books.create(CreateBook(name="Bulk"))
    taken = [f"TAKEN-{n}" for n in range(5)]
    earlier = [f"EARLIER-{n}" for n in range(4)]
    fresh = [f"FRESH-{n:02d}" for n in range(40)]
    await service.books.upload(other.id, taken)
    await service.books.upload(book.id, earlier)

    # Interleaved, so every chunk holds a mix.
    offered: list[object] = []
    for n, code in enumerate(fresh):
        offered.append(code)
        if n < len(taken):
            offered.append(taken[n])
        if n < len(earlier):
            offered.append(earlier[n])
        if n % 10 == 0:
            offered.append(code)  # again: a duplicate within the request
        if n in (13, 27):
            offered.append("not a code!" if n == 13 else 42)
    result = await service.books.upload(book.id, offered)

    assert result.added == len(fresh)
    assert sorted(result.refused.inOtherBook) == sorted(taken)
    assert sorted(result.refused.duplicates) == sorted(
        earlier + [c for n, c in enumerate(fresh) if n % 10 == 0])
    assert sorted(result.refused.invalid) == ["42", "not a code!"]
    assert await postgres_codes(service, book.id) == set(fresh + earlier)
    assert await redis_free(service, book.id) == set(fresh + earlier)
    assert await postgres_codes(service, other.id) == set(taken)
    await service.drain()
    assert await service.verify() == []


async def test_generation_across_many_chunks(service: Service) -> None:
    book = await service.books.create(CreateBook(name="Generated"))

    result = await service.books.generate(book.id, "GEN-########", 45)

    assert result.added == 45 and result.codes is not None and len(set(result.codes)) == 45
    assert await postgres_codes(service, book.id) == set(result.codes)
    assert await redis_free(service, book.id) == set(result.codes)
    await service.drain()
    assert await service.verify() == []


async def test_racing_uploads_of_overlapping_codes_give_each_code_one_book(
        service: Service) -> None:
    # Every chunk of both uploads tries the fast COPY first; where they
    # overlap, one COPY fails (or waits, then fails) and falls back. Sorted
    # chunks mean no deadlock: both answer, and each code has one book.
    first = await service.books.create(CreateBook(name="First"))
    second = await service.books.create(CreateBook(name="Second"))
    shared = [f"SHARED-{n:03d}" for n in range(60)]
    only_first = [f"FIRST-{n:03d}" for n in range(30)]
    only_second = [f"SECOND-{n:03d}" for n in range(30)]

    a, b = await asyncio.gather(service.books.upload(first.id, only_first + shared),
                                service.books.upload(second.id, shared[::-1] + only_second))

    assert a.added + b.added == len(shared) + 60
    assert sorted(a.refused.inOtherBook + b.refused.inOtherBook) == sorted(shared)
    in_first, in_second = (await postgres_codes(service, first.id),
                           await postgres_codes(service, second.id))
    assert in_first.isdisjoint(in_second)
    assert in_first | in_second == set(shared + only_first + only_second)
    assert await redis_free(service, first.id) == in_first
    assert await redis_free(service, second.id) == in_second
    await service.drain()
    assert await service.verify() == []


async def test_a_failing_chunk_stops_the_load_and_nothing_runs_after_it(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    book = await service.books.create(CreateBook(name="Fails"))
    codes = [f"CODE-{n:03d}" for n in range(70)]  # 10 chunks of 7
    claims = service.books.records.claim_codes
    started: list[int] = []

    async def claim_codes(book_id: str, chunk, want_new: bool = False):  # type: ignore[no-untyped-def]
        started.append(len(started))
        if len(started) == 3:
            raise RuntimeError("Postgres went away")
        return await claims(book_id, chunk, want_new)

    monkeypatch.setattr(service.books.records, "claim_codes", claim_codes)

    with pytest.raises(RuntimeError, match="went away"):
        await service.books.upload(book.id, codes)
    landed = await postgres_codes(service, book.id)
    await asyncio.sleep(0.2)  # anything still running would land meanwhile

    # The third chunk failed; at most the one beside it (two run at once) got in too.
    assert len(started) <= 4
    assert await postgres_codes(service, book.id) == landed
    assert await redis_free(service, book.id) == landed
