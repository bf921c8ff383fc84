"""A create that fails part-way, on a real Redis and Postgres: a client told
it failed finds no book left behind, and a retry with its Idempotency-Key
finishes the book it began instead of making a second one."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from couponsvc import errors
from couponsvc.coupons import Idempotency
from couponsvc.schemas import CreateBook

from .conftest import Service

pytestmark = pytest.mark.integration

KEY = Idempotency("ops", "create-1", "fp-create-1")


async def _book_rows(service: Service) -> list[tuple[str, str, int]]:
    rows = await service.pool.fetch(
        "SELECT b.id::text, b.name, count(c.code) AS codes FROM books b"
        " LEFT JOIN codes c ON c.book_id = b.id GROUP BY b.id, b.name ORDER BY b.name")
    return [(row["id"], row["name"], row["codes"]) for row in rows]


async def test_a_create_whose_index_write_fails_leaves_no_book(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    async def lost(*_: Any, **__: Any) -> None:
        raise RedisConnectionError("connection to Redis lost")

    monkeypatch.setattr(service.redis, "hset", lost)
    with pytest.raises(RedisConnectionError):
        await service.books.create(CreateBook(name="never"))
    monkeypatch.undo()

    assert await _book_rows(service) == []
    assert await service.redis.hlen(service.keys.books) == 0
    assert await service.verify() == []


async def test_a_create_whose_script_ran_but_answered_too_late_leaves_no_book(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ambiguous failure: create_book.lua ran, its reply never came."""
    real_run = service.store.run

    async def answer_lost(name: str, keys: Any, args: Any = ()) -> Any:
        reply = await real_run(name, keys, args)
        if name == "create_book":
            raise RedisTimeoutError("Redis did not answer in time")
        return reply

    monkeypatch.setattr(service.store, "run", answer_lost)
    with pytest.raises(RedisTimeoutError):
        await service.books.create(CreateBook(name="late"))
    monkeypatch.undo()

    assert await _book_rows(service) == []
    number = int(await service.redis.get(service.keys.book_seq))
    assert await service.redis.exists(service.keys.book(number).meta,
                                      service.keys.book(number).events) == 0
    assert await service.verify() == []


async def test_a_retry_finishes_a_create_whose_codes_failed_part_way(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    books = service.books
    real_generate = books._generate

    async def fails_half_way(book: Any, pattern: str, count: int) -> Any:
        await real_generate(book, pattern, count // 2)
        raise errors.ServiceUnavailable("Postgres did not answer")

    monkeypatch.setattr(books, "_generate", fails_half_way)
    req = CreateBook(name="half", initialCouponAmount=40, codePattern="HALF-#####")
    with pytest.raises(errors.ServiceUnavailable):
        await books.create_once(req, KEY)
    [(book_id, _, codes)] = await _book_rows(service)
    assert codes == 20
    monkeypatch.undo()

    book, replayed = await books.create_once(req, KEY)
    await service.drain()

    assert (book.id, replayed, book.counts.total, book.counts.available) == \
        (book_id, True, 40, 40)
    assert await _book_rows(service) == [(book_id, "half", 40)]
    assert await service.verify() == []
