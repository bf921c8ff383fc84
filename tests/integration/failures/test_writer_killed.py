"""A writer killed with SIGKILL in the middle of a load loses nothing and
applies nothing twice: the next writer reclaims what it left unacknowledged."""

from __future__ import annotations

import asyncio
import signal
import socket

import asyncpg
import pytest
from redis.asyncio import Redis

from couponsvc.outbox import GROUP

from ..api_client import Api
from ..names import new_code
from .harness import (
    Durable,
    differences,
    duplicate_events,
    event_types,
    kill_holding_entries,
    stream_of,
    unacknowledged,
    wait_for,
)
from .load import Tally, flows_reached, run_load

pytestmark = pytest.mark.integration

CODES = 800
FLOWS = 880  # about 2700 assign/lock/redeem requests, and 80 assigns to an empty book
CONCURRENCY = 40
LOAD_SECONDS = 40.0
CATCH_UP_SECONDS = 20.0


async def test_a_writer_killed_mid_load_loses_nothing_and_applies_nothing_twice(
        stack: Durable, api: Api, redis: Redis, conn: asyncpg.Connection) -> None:
    book = await api.create_book(lockTtlSeconds=3600)
    await api.upload(book["id"], [new_code() for _ in range(CODES)])
    stream = await stream_of(redis, book["id"])
    first = stack.start_writer()

    tally = Tally()
    load = asyncio.create_task(run_load(api, book["id"], tally, flows=FLOWS,
                                        concurrency=CONCURRENCY, deadline_s=LOAD_SECONDS))
    try:
        await wait_for(flows_reached(tally, FLOWS // 3), LOAD_SECONDS, "a third of the load")
        held = await kill_holding_entries(first, redis, stream)
        assert first.returncode == -signal.SIGKILL
        killed_at = tally.flows
        await wait_for(flows_reached(tally, 2 * FLOWS // 3), LOAD_SECONDS,
                       "two thirds of the load")
        stack.start_writer()
    finally:
        await load
    assert killed_at < tally.flows, "the writer was killed after the load ended"

    # The second writer alone catches up, taking over what the first left pending.
    async def caught_up() -> bool:
        return await unacknowledged(redis, stream) == 0
    await wait_for(caught_up, CATCH_UP_SECONDS, "the new writer to catch up")
    dead = f"{socket.gethostname()}-{first.pid}"
    consumers = {c["name"]: c["pending"] for c in await redis.xinfo_consumers(stream, GROUP)}
    assert held > 0 and consumers[dead] == 0, consumers
    await stack.drain()

    assert tally.ok("assign") == len(tally.assigned) == CODES, tally.statuses
    assert tally.statuses["assign 409"] == FLOWS - CODES, tally.statuses
    assert tally.ok("redeem") > 0 and tally.statuses["lock 423"] > 0, tally.statuses
    assert await differences(redis, conn, book["id"]) == []
    await stack.verify()

    assert await duplicate_events(conn) == 0
    types = await event_types(conn, book["id"])
    assert types == {"book_created": 1, "codes_added": 1, "assigned": tally.ok("assign"),
                     "locked": tally.ok("lock"), "redeemed": tally.ok("redeem")}, tally.statuses
    assert sum(types.values()) == 2 + tally.events
