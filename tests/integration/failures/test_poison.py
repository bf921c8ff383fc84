"""An event the writer cannot apply is parked in `parked_events` after the
configured attempts and acknowledged; the good events around it are applied."""

from __future__ import annotations

import json
import time

import asyncpg
import pytest
from redis.asyncio import Redis

from couponsvc.outbox import GROUP

from ..api_client import Api
from ..names import new_code
from .harness import Durable, differences, event_types, stream_of, unacknowledged, wait_for
from .load import churn

pytestmark = pytest.mark.integration

MAX_ATTEMPTS = 5  # writer.WriterConfig.max_attempts; the CLI has no flag for it
PARK_SECONDS = 20.0


def assigned_event(book_id: str, **changes: str) -> dict[str, str]:
    """The fields of an `assigned` outbox entry, as assign_*.lua writes them."""
    now = str(int(time.time() * 1000))
    fields = {"type": "assigned", "book": book_id, "code": new_code("P"), "user": "mallory",
              "at": now, "v": "1", "assignedAt": now, "times": "0", "last": "0"}
    fields.update(changes)
    return {name: value for name, value in fields.items() if value != "(absent)"}


async def poison_between_good_events(api: Api, redis: Redis, book_id: str, codes: list[str],
                                     poison: dict[str, str]) -> tuple[str, str, int]:
    """Good events, the poison, more good events; (stream, poison id, entries)."""
    stream = await stream_of(redis, book_id)
    written = await churn(api, codes[:4])
    poison_id = await redis.xadd(stream, poison)
    written += await churn(api, codes[4:])
    return stream, poison_id, 2 + written + 1


async def test_an_event_postgres_refuses_is_parked_after_the_attempts(
        stack: Durable, api: Api, redis: Redis, conn: asyncpg.Connection) -> None:
    book, codes = await api.book_with_codes(8)
    # A well-formed event that Postgres refuses (as a constraint a later
    # migration adds could): this test database's codes refuse one owner.
    await conn.execute("ALTER TABLE codes ADD CONSTRAINT refuse_poison"
                       " CHECK (owner IS DISTINCT FROM 'poison-owner')")
    fields = assigned_event(book["id"], user="poison-owner")
    stream, poison_id, entries = await poison_between_good_events(
        api, redis, book["id"], codes, fields)
    writer = stack.start_writer()

    async def parked() -> bool:
        return bool(await conn.fetchval("SELECT count(*) FROM parked_events")) \
            or writer.poll() is not None
    await wait_for(parked, PARK_SECONDS, "the poison event to be parked", interval=0.25)
    assert writer.poll() is None, f"the writer exited:\n{stack.writer_log(writer)[-1500:]}"

    [row] = await conn.fetch("SELECT * FROM parked_events")
    assert (str(row["book_id"]), row["stream_id"]) == (fields["book"], poison_id)
    assert json.loads(row["fields"]) == fields
    assert row["attempts"] == MAX_ATTEMPTS and 'check constraint "refuse_poison"' in row["error"]

    async def acknowledged() -> bool:
        return await unacknowledged(redis, stream) == 0
    await wait_for(acknowledged, PARK_SECONDS, "the poison event to be acknowledged")
    assert (await redis.xpending(stream, GROUP))["pending"] == 0
    assert await differences(redis, conn, book["id"]) == []
    assert sum((await event_types(conn, book["id"])).values()) == entries - 1
    assert await conn.fetchval("SELECT count(*) FROM codes WHERE code = $1", fields["code"]) == 0


@pytest.mark.parametrize("poison", [
    pytest.param({"v": "not-a-number"}, id="version-not-a-number"),
    pytest.param({"v": "99999999999"}, id="version-over-the-integer-column"),
    pytest.param({"assignedAt": "(absent)"}, id="field-missing"),
])
async def test_a_malformed_event_is_parked_after_the_attempts(
        stack: Durable, api: Api, redis: Redis, conn: asyncpg.Connection,
        poison: dict[str, str]) -> None:
    book, codes = await api.book_with_codes(8)
    fields = assigned_event(book["id"], **poison)
    stream, poison_id, entries = await poison_between_good_events(
        api, redis, book["id"], codes, fields)
    writer = stack.start_writer()

    async def settled() -> bool:
        return (await unacknowledged(redis, stream) == 0) or writer.poll() is not None
    await wait_for(settled, PARK_SECONDS, "the poison event to be parked", interval=0.25)
    assert writer.poll() is None, f"the writer exited:\n{stack.writer_log(writer)[-1500:]}"

    [row] = await conn.fetch("SELECT * FROM parked_events")
    assert (str(row["book_id"]), row["stream_id"]) == (book["id"], poison_id)
    assert json.loads(row["fields"]) == fields
    assert row["attempts"] == MAX_ATTEMPTS
    assert await differences(redis, conn, book["id"]) == []
    assert sum((await event_types(conn, book["id"])).values()) == entries - 1


@pytest.mark.parametrize("poison", [
    pytest.param({"user": "nul\x00byte"}, id="user-with-nul"),
    pytest.param({"book": "not-a-uuid"}, id="book-not-a-uuid"),
])
async def test_an_event_that_cannot_be_stored_as_is_is_still_parked(
        stack: Durable, api: Api, redis: Redis, conn: asyncpg.Connection,
        poison: dict[str, str]) -> None:
    book, codes = await api.book_with_codes(8)
    stream, poison_id, entries = await poison_between_good_events(
        api, redis, book["id"], codes, assigned_event(book["id"], **poison))
    writer = stack.start_writer()

    async def settled() -> bool:
        return (await unacknowledged(redis, stream) == 0) or writer.poll() is not None
    await wait_for(settled, PARK_SECONDS, "the poison event to be parked", interval=0.25)
    assert writer.poll() is None, f"the writer exited:\n{stack.writer_log(writer)[-1500:]}"

    assert [r["stream_id"] for r in await conn.fetch("SELECT * FROM parked_events")] == [
        poison_id]
    assert await differences(redis, conn, book["id"]) == []
    assert sum((await event_types(conn, book["id"])).values()) == entries - 1
