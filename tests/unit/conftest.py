"""Fixtures for the unit tests: a fresh fakeredis server (with Lua) per test,
the scripts registered on it, and the service layer built on top."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import fakeredis
import pytest

from couponsvc.auth import ADMIN, WRITE, Principal
from couponsvc.books import Books
from couponsvc.coupons import Coupons
from couponsvc.keys import BookKeys
from couponsvc.schemas import Book, CreateBook
from couponsvc.scripts import Scripts
from couponsvc.settings import Settings
from couponsvc.store import Store

MakeBook = Callable[..., Awaitable[Book]]
Events = Callable[[str], Awaitable[list[dict[str, str]]]]
BookKeysOf = Callable[[str], Awaitable[BookKeys]]


@pytest.fixture
def settings() -> Settings:
    return Settings(env="dev")


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def scripts(redis: fakeredis.FakeAsyncRedis) -> Scripts:
    scripts = Scripts(redis)
    await scripts.load()
    return scripts


@pytest.fixture
def store(redis: fakeredis.FakeAsyncRedis, scripts: Scripts, settings: Settings) -> Store:
    return Store(redis, scripts, settings)


@pytest.fixture
def books(store: Store) -> Books:
    return Books(store)


@pytest.fixture
def coupons(store: Store) -> Coupons:
    return Coupons(store)


@pytest.fixture
def admin() -> Principal:
    return Principal("admin", frozenset({ADMIN}))


@pytest.fixture
def writer() -> Principal:
    """A checkout back-end: may act for any user."""
    return Principal("checkout", frozenset({WRITE}))


@pytest.fixture
def alice() -> Principal:
    """An end user (no scopes): may act only for itself."""
    return Principal("alice", frozenset())


@pytest.fixture
def make_book(books: Books) -> MakeBook:
    """Creates a book with CreateBook fields, then uploads `codes` into it."""

    async def make(codes: Sequence[str] = (), **fields: Any) -> Book:
        fields.setdefault("name", "test book")
        book = await books.create(CreateBook(**fields))
        if codes:
            result = await books.upload(book.id, list(codes))
            assert result.added == len(codes), result
        return book

    return make


@pytest.fixture
def keys_of(store: Store) -> BookKeysOf:
    async def keys(book_id: str) -> BookKeys:
        return (await store.book(book_id)).keys

    return keys


@pytest.fixture
def events(redis: fakeredis.FakeAsyncRedis, keys_of: BookKeysOf) -> Events:
    """The field maps of a book's outbox stream, oldest first."""

    async def read(book_id: str) -> list[dict[str, str]]:
        stream = (await keys_of(book_id)).events
        return [entry for _, entry in await redis.xrange(stream)]

    return read
