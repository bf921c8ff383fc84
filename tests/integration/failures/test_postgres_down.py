"""PostgreSQL down for a few seconds under load: the API keeps serving from
Redis, events wait in the outbox, and the running writer catches up alone."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import asyncpg
import pytest
from redis.asyncio import Redis

from support.postgres import Postgres, clone_database, migrated

from ..api_client import Api
from ..names import new_code
from ..problems import assert_unavailable
from .harness import (
    Durable,
    differences,
    duplicate_events,
    event_types,
    stream_of,
    unacknowledged,
    wait_for,
)
from .load import flows_reached, load_running
from .tcp_proxy import SlowCloseProxy

pytestmark = pytest.mark.integration

CODES = 600
FLOWS = 600
CONCURRENCY = 20
LOAD_SECONDS = 40.0
OUTAGE_SECONDS = 2.0
CATCH_UP_SECONDS = 30.0
RESTART_ATTEMPTS = 20


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    """A cluster of this test's own: it is killed and restarted."""
    with migrated() as server:
        yield server


@pytest.fixture
async def pg_url(own_postgres: Postgres) -> str:
    """A database on the cluster to kill. The test clusters run with
    synchronous_commit=off for speed, which by design forgets the last commits
    when the server crashes; this database commits as production does."""
    url = await clone_database(own_postgres)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            f"ALTER DATABASE {url.rsplit('/', 1)[1]} SET synchronous_commit = on")
    finally:
        await conn.close()
    return url


def restart(server: Postgres) -> None:
    """Starts the killed cluster again (crash recovery); its orphaned backends
    may need a moment to exit first."""
    for attempt in range(RESTART_ATTEMPTS):
        try:
            server.start()
            return
        except RuntimeError:
            if server.process is not None and server.process.poll() is None:
                server.stop()  # stuck in start-up: stop it before trying again
            server.process = None
            if attempt == RESTART_ATTEMPTS - 1:
                raise
            time.sleep(0.25)  # called in a thread: the event loop keeps running


async def test_postgres_down_under_load_then_the_writer_catches_up(
        stack: Durable, api: Api, redis: Redis, own_postgres: Postgres, pg_url: str) -> None:
    book = await api.create_book(lockTtlSeconds=3600)
    await api.upload(book["id"], [new_code() for _ in range(CODES)])
    stream = await stream_of(redis, book["id"])
    writer = stack.start_writer()

    async with load_running(api, book["id"], flows=FLOWS, concurrency=CONCURRENCY,
                            deadline_s=LOAD_SECONDS) as tally:
        await wait_for(flows_reached(tally, 50), LOAD_SECONDS, "the load to start")
        await asyncio.to_thread(own_postgres.stop, signal.SIGKILL)
        flows_at_kill, length_at_kill = tally.flows, await redis.xlen(stream)
        behind_at_kill = await unacknowledged(redis, stream)

        refused = await api.post("/coupons", {"name": "while postgres is down"},
                                 token=api.server.admin)
        assert_unavailable(refused)
        outage_ends = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < outage_ends:
            ready = await api.client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["status"] == "degraded", ready.text
            assert ready.json()["checks"]["redis"] == "ok", ready.text
            assert ready.json()["checks"]["postgres"] != "ok", ready.text
            await asyncio.sleep(0.25)

        assert tally.flows > flows_at_kill, "the API stopped serving checkouts"
        assert await redis.xlen(stream) > length_at_kill
        assert await unacknowledged(redis, stream) > behind_at_kill
        await asyncio.to_thread(restart, own_postgres)
        flows_at_restart = tally.flows
        await wait_for(flows_reached(tally, flows_at_restart + 50), LOAD_SECONDS,
                       "more load after the restart")

    assert not [s for s in tally.statuses if s.split()[1].startswith("5")], tally.statuses
    assert not [s for s in tally.statuses if s.startswith("error")], tally.statuses

    async def caught_up() -> bool:
        return await unacknowledged(redis, stream) == 0 or writer.poll() is not None
    await wait_for(caught_up, CATCH_UP_SECONDS, "the running writer to catch up", interval=0.25)
    assert writer.poll() is None, f"the writer exited:\n{stack.writer_log(writer)[-1500:]}"
    assert (await api.client.get("/readyz")).json()["status"] == "ok"
    conn = await asyncpg.connect(pg_url)
    try:
        assert await differences(redis, conn, book["id"]) == []
        assert await duplicate_events(conn) == 0
        types = await event_types(conn, book["id"])
    finally:
        await conn.close()
    assert types == {"book_created": 1, "codes_added": 1, "assigned": tally.ok("assign"),
                     "locked": tally.ok("lock"), "redeemed": tally.ok("redeem")}, tally.statuses
    await stack.verify()


async def test_the_writer_survives_postgres_killed_in_the_middle_of_a_batch(
        stack: Durable, api: Api, redis: Redis, own_postgres: Postgres, pg_url: str) -> None:
    book, codes = await api.book_with_codes(20)
    stream = await stream_of(redis, book["id"])
    writer = stack.start_writer()
    blocker = await asyncpg.connect(pg_url)
    try:
        # The writer's next batch blocks on this lock, half-way through its statements.
        await blocker.execute("BEGIN; LOCK TABLE codes IN SHARE ROW EXCLUSIVE MODE")
        for code in codes[:10]:
            assert (await api.assign_code(code, f"user-{code}")).status_code == 200

        async def writer_blocked() -> bool:
            await blocker.execute("SELECT pg_stat_clear_snapshot()")
            return bool(await blocker.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO codes%'"))
        await wait_for(writer_blocked, 10, "the writer to wait on the lock")
        await asyncio.to_thread(own_postgres.stop, signal.SIGKILL)
    finally:
        blocker.terminate()
    await asyncio.to_thread(restart, own_postgres)
    for code in codes[10:]:
        assert (await api.assign_code(code, f"user-{code}")).status_code == 200

    async def caught_up() -> bool:
        return await unacknowledged(redis, stream) == 0 or writer.poll() is not None
    await wait_for(caught_up, CATCH_UP_SECONDS, "the writer to catch up", interval=0.25)
    assert writer.poll() is None, f"the writer exited:\n{stack.writer_log(writer)[-1500:]}"
    conn = await asyncpg.connect(pg_url)
    try:
        # The batch cut short was rolled back whole, then applied again whole.
        assert await differences(redis, conn, book["id"]) == []
        assert await event_types(conn, book["id"]) == {
            "book_created": 1, "codes_added": 1, "assigned": len(codes)}
    finally:
        await conn.close()


async def test_the_writer_survives_a_connection_that_closes_after_its_fatal_error(
        stack: Durable, api: Api, redis: Redis, own_postgres: Postgres, pg_url: str) -> None:
    proxy = await SlowCloseProxy(own_postgres.port, close_delay=3.0).start()
    try:
        book, codes = await api.book_with_codes(10)
        stream = await stream_of(redis, book["id"])
        via_proxy = pg_url.replace(f":{own_postgres.port}/", f":{proxy.port}/")
        writer = stack.start_writer(database_url=via_proxy)

        async def caught_up() -> bool:
            return await unacknowledged(redis, stream) == 0 or writer.poll() is not None
        for code in codes[:5]:
            assert (await api.assign_code(code, f"user-{code}")).status_code == 200
        await wait_for(caught_up, CATCH_UP_SECONDS, "the writer to catch up")

        # The writer's idle pooled connection receives "terminating connection due
        # to unexpected postmaster exit"; its socket closes 3 s later.
        await asyncio.to_thread(own_postgres.stop, signal.SIGKILL)
        await asyncio.sleep(0.5)
        for code in codes[5:]:
            assert (await api.assign_code(code, f"user-{code}")).status_code == 200
        await asyncio.sleep(1.0)  # the writer tries to apply them meanwhile
        await asyncio.to_thread(restart, own_postgres)
        await wait_for(caught_up, CATCH_UP_SECONDS, "the writer to catch up")
        assert writer.poll() is None, f"the writer exited:\n{stack.writer_log(writer)[-1500:]}"
    finally:
        await proxy.close()
    conn = await asyncpg.connect(pg_url)
    try:
        assert await differences(redis, conn, book["id"]) == []
    finally:
        await conn.close()
