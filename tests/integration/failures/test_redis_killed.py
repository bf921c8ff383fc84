"""Redis killed with SIGKILL under load and restarted on its append-only file:
every change the API acknowledged reaches Postgres, the outage answers fast
503s, and service resumes on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from ..api_client import Api
from ..names import new_code, new_user
from ..problems import assert_unavailable
from ..servers import RedisServer, started
from .harness import (
    AofRedis,
    Durable,
    assert_acknowledged_in_postgres,
    differences,
    duplicate_events,
    stream_of,
    wait_for,
    wait_until_serving,
)
from .load import flows_reached, load_running

pytestmark = pytest.mark.integration

CODES = 900
FLOWS = 1200
CONCURRENCY = 20
LOAD_SECONDS = 40.0
OUTAGE_SECONDS = 1.5
RECOVERY_SECONDS = 20.0
CATCH_UP_SECONDS = 30.0
# What a request may answer while Redis dies and comes back: success, the
# book running out, a lock held by the racing request, or a fast 503.
EXPECTED = {200, 409, 423, 503}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """AOF with fsync every second, as production runs it."""
    with started(AofRedis(tmp_path / "redis")) as server:
        yield server


async def test_acknowledged_changes_survive_a_redis_crash(
        stack: Durable, api: Api, redis: Redis, redis_server: RedisServer,
        conn: asyncpg.Connection) -> None:
    book = await api.create_book(lockTtlSeconds=3600)
    await api.upload(book["id"], [new_code() for _ in range(CODES)])
    stream = await stream_of(redis, book["id"])
    writer = stack.start_writer()

    async with load_running(api, book["id"], flows=FLOWS, concurrency=CONCURRENCY,
                            deadline_s=LOAD_SECONDS, pause_on_error_s=0.5) as tally:
        await wait_for(flows_reached(tally, 150), LOAD_SECONDS, "the load to start")
        redis_server.kill()
        probe = new_user()
        for call in (api.assign(book["id"], probe), api.lock(new_code(), probe),
                     api.redeem(new_code(), probe), api.get(f"/coupons/{book['id']}")):
            assert_unavailable(await call)  # the client gives up after 10 s: a hang fails
        ready = await api.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
        await asyncio.sleep(OUTAGE_SECONDS)

        redis_server.start()  # same port, same folder: it replays its AOF
        await redis.connection_pool.disconnect()  # this test's own client: connect afresh
        await wait_until_serving(api, book["id"], probe, RECOVERY_SECONDS,
                                 "the API to serve again")
        at_resume = tally.flows
        await wait_for(flows_reached(tally, at_resume + 100), LOAD_SECONDS,
                       "the load to go on after the restart")
    assert tally.statuses["assign 503"] > 0, tally.statuses
    assert not [s for s in tally.statuses if s.startswith("error")], tally.statuses
    assert {int(s.split()[1]) for s in tally.statuses} <= EXPECTED, tally.statuses

    await assert_acknowledged_in_postgres(stack, writer, redis, conn, stream, book["id"], tally,
                                          CATCH_UP_SECONDS)
    locked = {r["code"] for r in await conn.fetch(
        "SELECT DISTINCT code FROM events WHERE book_id = $1 AND type = 'locked'", book["id"])}
    assert tally.locked <= locked, f"{len(tally.locked - locked)} acknowledged locks missing"
    assert await differences(redis, conn, book["id"]) == []
    assert await duplicate_events(conn) == 0
    await stack.verify()
