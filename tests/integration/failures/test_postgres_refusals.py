"""Postgres refusing the writer for a while, for reasons that are not the
events' own: the events wait and are applied later, none is parked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from couponsvc import db
from couponsvc.keys import Keys
from couponsvc.writer import Writer, WriterConfig

from ..api_client import Api
from ..problems import assert_unavailable
from .harness import Durable, differences, event_types, stream_of, unacknowledged
from .load import churn

pytestmark = pytest.mark.integration

MAX_ATTEMPTS = WriterConfig().max_attempts  # a parked event has had this many


async def checkout_events(api: Api, redis: Redis) -> tuple[str, str, int]:
    """A book, and a few checkouts on it not yet applied: (book id, stream, events)."""
    book, codes = await api.book_with_codes(10)
    written = 2 + await churn(api, codes[:5])
    return book["id"], await stream_of(redis, book["id"]), written


async def all_applied(redis: Redis, conn: asyncpg.Connection, writer: Writer, book_id: str,
                      stream: str, written: int) -> None:
    await writer.drain(timeout_s=20)
    assert await unacknowledged(redis, stream) == 0
    assert await conn.fetchval("SELECT count(*) FROM parked_events") == 0
    assert sum((await event_types(conn, book_id)).values()) == written
    assert await differences(redis, conn, book_id) == []


def pauses(caplog: pytest.LogCaptureFixture, stream: str, error: str) -> int:
    """How many times the writer logged a pause of `stream` for `error`."""
    messages = [r.getMessage() for r in caplog.records]
    return sum(1 for m in messages if m.startswith(f"writer paused on {stream} ") and error in m)


# Pauses short enough for a test to retry often.
QUICK_PAUSES = {"not_now_pause_s": 0.01, "not_now_pause_max_s": 0.01}


@pytest.fixture
async def impatient_writer(redis: Redis, pg_url: str) -> AsyncIterator[Writer]:
    """A writer whose sessions wait 100 ms for a lock (lock_timeout), then give up."""
    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=4,
                                     server_settings={"lock_timeout": "100"})
    try:
        yield Writer(redis, pool, Keys("cb"), WriterConfig(consumer="impatient", **QUICK_PAUSES))
    finally:
        await pool.close()


async def test_a_table_locked_past_the_lock_timeout_parks_nothing(
        stack: Durable, api: Api, redis: Redis, conn: asyncpg.Connection,
        impatient_writer: Writer, caplog: pytest.LogCaptureFixture) -> None:
    """A migration or VACUUM FULL holding `codes`, with a lock_timeout set:
    every event failed alike, each counted an attempt, and after five passes
    the writer parked (and acknowledged) valid checkouts for good."""
    book_id, stream, written = await checkout_events(api, redis)
    writer = impatient_writer
    async with conn.transaction():
        await conn.execute("LOCK TABLE codes IN ACCESS EXCLUSIVE MODE")
        for _ in range(MAX_ATTEMPTS + 2):
            assert await writer.step() == 0
            await asyncio.sleep(0.02)  # past the pause: the next pass tries again
        assert pauses(caplog, stream, "LockNotAvailableError") == MAX_ATTEMPTS + 2
        assert await conn.fetchval("SELECT count(*) FROM parked_events") == 0
        assert await unacknowledged(redis, stream) == written

    await all_applied(redis, conn, writer, book_id, stream, written)


async def test_one_books_locked_rows_do_not_hold_up_another_book(
        stack: Durable, api: Api, redis: Redis, conn: asyncpg.Connection,
        impatient_writer: Writer, caplog: pytest.LogCaptureFixture) -> None:
    held_id, held_stream, held_written = await checkout_events(api, redis)
    free_id, free_stream, free_written = await checkout_events(api, redis)
    writer = impatient_writer
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM codes WHERE book_id = $1 FOR UPDATE", held_id)
        while await writer.step():
            pass
        assert await unacknowledged(redis, free_stream) == 0
        assert await unacknowledged(redis, held_stream) == held_written
        assert pauses(caplog, held_stream, "LockNotAvailableError") >= 1

    await all_applied(redis, conn, writer, held_id, held_stream, held_written)
    assert sum((await event_types(conn, free_id)).values()) == free_written


async def test_sessions_opened_while_the_database_was_read_only_are_replaced(
        stack: Durable, api: Api, redis: Redis, conn: asyncpg.Connection, pg_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """A session keeps the read-only default it was opened with (as one does
    that still points at a demoted primary): the pool's sessions failed on
    after the database was writable again, until the writer was restarted."""
    book_id, stream, written = await checkout_events(api, redis)
    database = await conn.fetchval("SELECT current_database()")
    await conn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    pool = await db.connect(pg_url, min_size=2, max_size=4)  # its sessions open read-only
    try:
        writer = Writer(redis, pool, Keys("cb"), WriterConfig(consumer="read-only",
                                                              **QUICK_PAUSES))
        assert await writer.step() == 0
        assert pauses(caplog, stream, "ReadOnlySQLTransactionError") == 1
        await conn.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')

        await all_applied(redis, conn, writer, book_id, stream, written)
    finally:
        await pool.close()


async def test_an_admin_write_to_a_read_only_database_is_503_then_works_again(
        stack: Durable, api: Api, conn: asyncpg.Connection) -> None:
    """A create against a read-only database was a 500; and the API's pooled
    sessions, opened read-only, kept refusing once it was writable again."""
    database = await conn.fetchval("SELECT current_database()")
    books_before = await conn.fetchval("SELECT count(*) FROM books")
    await conn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    # The API's sessions start again, read-only (as after a switch to a replica).
    await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                       " WHERE datname = $1 AND pid <> pg_backend_pid()", database)

    refused = await api.post("/coupons", {"name": "read-only"}, token=api.server.admin)
    await conn.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
    made = await api.post("/coupons", {"name": "writable again"}, token=api.server.admin)

    assert_unavailable(refused)
    assert refused.json()["detail"] == "Postgres cannot take this write right now; retry shortly"
    assert made.status_code == 201, made.text
    assert await conn.fetchval("SELECT count(*) FROM books") == books_before + 1
