"""A create with an Idempotency-Key that fails part-way, on a real Redis and
Postgres: its retry goes on with the same book, whatever step failed, so the
key makes one book, complete and the same in both stores."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from couponsvc import errors, loads
from couponsvc.coupons import Idempotency
from couponsvc.schemas import CreateBook

from .conftest import Service

pytestmark = pytest.mark.integration

KEY = Idempotency("ops", "create-1", "fp-create-1")
CODES = 40
REQUEST = CreateBook(name="retried", initialCouponAmount=CODES, codePattern="R-#######")


def _insert_committed_then_lost(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The book's row is committed; the answer never reaches the API."""
    records = service.books.records
    assert records is not None
    real_insert = records.insert_book

    async def insert(row: Any) -> None:
        await real_insert(row)
        raise errors.ServiceUnavailable("Postgres did not answer")

    monkeypatch.setattr(records, "insert_book", insert)


def _script_ran_answer_lost(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = service.store.run

    async def run(name: str, keys: Any, args: Any = ()) -> Any:
        reply = await real_run(name, keys, args)
        if name == "create_book":
            raise RedisTimeoutError("Redis did not answer in time")
        return reply

    monkeypatch.setattr(service.store, "run", run)


def _index_write_fails(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    async def hset(*_: Any, **__: Any) -> None:
        raise RedisConnectionError("connection to Redis lost")

    monkeypatch.setattr(service.redis, "hset", hset)


def _codes_recorded_but_not_added(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each chunk is committed in Postgres, then Redis fails to add it."""
    async def add(*_: Any) -> None:
        raise RedisConnectionError("connection to Redis lost")

    monkeypatch.setattr(loads, "add", add)


def _codes_half_made(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    books = service.books
    real_generate = books._generate

    async def generate(book: Any, pattern: str, count: int, before_round: Any = None) -> Any:
        await real_generate(book, pattern, count // 2, before_round)
        raise errors.ServiceUnavailable("Postgres did not answer")

    monkeypatch.setattr(books, "_generate", generate)


FAILURES: dict[str, Callable[[Service, pytest.MonkeyPatch], None]] = {
    "insert committed, answer lost": _insert_committed_then_lost,
    "create_book ran, answer lost": _script_ran_answer_lost,
    "index write fails": _index_write_fails,
    "codes recorded, not added to Redis": _codes_recorded_but_not_added,
    "half the codes made": _codes_half_made,
}


async def _book_rows(service: Service) -> list[tuple[str, int]]:
    rows = await service.pool.fetch(
        "SELECT b.id::text, count(c.code) AS codes FROM books b"
        " LEFT JOIN codes c ON c.book_id = b.id GROUP BY b.id")
    return [(row["id"], row["codes"]) for row in rows]


@pytest.mark.parametrize("failure", FAILURES)
async def test_the_retry_of_a_create_that_failed_part_way_makes_one_whole_book(
        service: Service, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    FAILURES[failure](service, monkeypatch)
    with pytest.raises((errors.ServiceUnavailable, RedisConnectionError, RedisTimeoutError)):
        await service.books.create_once(REQUEST, KEY)
    monkeypatch.undo()

    book, replayed = await service.books.create_once(REQUEST, KEY)
    again, replayed_again = await service.books.create_once(REQUEST, KEY)
    await service.drain()

    assert (replayed, replayed_again, again.id) == (False, True, book.id)
    assert (book.counts.total, book.counts.available) == (CODES, CODES)
    assert await _book_rows(service) == [(book.id, CODES)]
    assert await service.redis.hgetall(service.keys.books) == \
        {book.id: str(await service.number(book.id))}
    assert await service.verify() == []


async def test_a_create_that_stalled_while_its_retry_made_the_book_adds_nothing(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first request stalls past its lease; the retry takes over and makes
    the book; the first must then stop, not add its remaining codes."""
    books = service.books
    real_generate = books._generate
    calls = 0

    async def first_stalls(book: Any, pattern: str, count: int, before_round: Any = None) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:  # the retry's own generation
            return await real_generate(book, pattern, count, before_round)
        await real_generate(book, pattern, count // 2, before_round)
        await service.redis.delete(service.keys.idempotency_lease(KEY.caller, KEY.key))
        retry, _ = await books.create_once(REQUEST, KEY)
        assert retry.counts.total == CODES
        return await real_generate(book, pattern, count - count // 2, before_round)

    monkeypatch.setattr(books, "_generate", first_stalls)
    with pytest.raises(errors.IdempotencyKeyInProgress):
        await books.create_once(REQUEST, KEY)
    monkeypatch.undo()
    book, replayed = await books.create_once(REQUEST, KEY)
    await service.drain()

    assert (replayed, book.counts.total) == (True, CODES)
    assert await _book_rows(service) == [(book.id, CODES)]
    assert await service.verify() == []


async def test_a_maker_that_finds_its_book_recorded_meanwhile_takes_its_number(
        service: Service) -> None:
    """Two makers of one key (one whose lease lapsed): the second to record
    the book finds the row by its id and goes on with that number."""
    book_id = str(uuid.uuid4())
    first, fresh = await service.books._number(REQUEST, book_id, resuming=False)
    again, fresh_again = await service.books._number(REQUEST, book_id, resuming=False)

    assert (fresh, fresh_again) == (True, False)
    assert again.number == first.number
    assert len(await _book_rows(service)) == 1
