"""Bulk loads in overlapping stages (Postgres takes a chunk while Redis takes
the one before): the outcome, Postgres and Redis are the same as one stage.

The chunk size is made tiny so that a few dozen codes cross many chunk
boundaries; the service layer runs on a real Redis (one node and the
cluster) and a real Postgres.
"""

from __future__ import annotations

import pytest

from couponsvc import books as books_module
from couponsvc.schemas import CreateBook

from .conftest import Service

pytestmark = pytest.mark.integration

CHUNK = 7


@pytest.fixture(autouse=True)
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(books_module, "LOAD_CHUNK", CHUNK)


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
