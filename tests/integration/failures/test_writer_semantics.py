"""What the writer promises about delivery: redelivered and out-of-order
events change nothing, two writers at once apply each event once, and
SIGTERM stops a writer cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from couponsvc import db
from couponsvc.keys import Keys
from couponsvc.metrics import WriterMetrics
from couponsvc.outbox import GROUP, Event, apply_events, parse_entries
from couponsvc.writer import Writer, WriterConfig

from ..api_client import Api
from ..servers import free_port, stop_process
from .harness import (
    Durable,
    differences,
    duplicate_events,
    event_types,
    stream_of,
    unacknowledged,
    wait_for,
)
from .load import Tally, churn, flows_reached, load_running, run_load

pytestmark = pytest.mark.integration

CATCH_UP_SECONDS = 20.0
STOP_SECONDS = 5.0
TABLES = ("SELECT * FROM events ORDER BY book_id, stream_id",
          "SELECT * FROM codes ORDER BY code",
          "SELECT * FROM books ORDER BY id")


async def snapshot(conn: asyncpg.Connection) -> list[list[asyncpg.Record]]:
    return [await conn.fetch(query) for query in TABLES]


async def test_redelivered_events_change_nothing(
        stack: Durable, api: Api, redis: Redis, conn: asyncpg.Connection) -> None:
    book, codes = await api.book_with_codes(30)
    stream = await stream_of(redis, book["id"])
    written = await churn(api, codes[:20])
    # A second group that reads nothing keeps every entry in the stream (entries
    # are trimmed only once every group is past them), so all can be replayed.
    await redis.xgroup_create(stream, "keep", id="0")
    await stack.drain()
    before = await snapshot(conn)
    assert sum((await event_types(conn, book["id"])).values()) == 2 + written
    assert await redis.xlen(stream) == 2 + written

    await redis.xgroup_setid(stream, GROUP, "0")
    assert await unacknowledged(redis, stream) == 2 + written
    await stack.drain()

    assert await unacknowledged(redis, stream) == 0
    assert await snapshot(conn) == before
    assert await differences(redis, conn, book["id"]) == []
    # Applied again, not given up on as failures.
    assert await conn.fetchval("SELECT count(*) FROM parked_events WHERE stream = $1",
                               stream) == 0


async def test_events_applied_out_of_order_keep_the_latest_state(
        stack: Durable, api: Api, redis: Redis, conn: asyncpg.Connection) -> None:
    book, codes = await api.book_with_codes(2)
    stream = await stream_of(redis, book["id"])
    await churn(api, codes)  # codes[0]: assigned v1, locked v2, redeemed v3
    entries = await redis.xrange(stream)
    events = [e for e in parse_entries(stream, entries)[0] if e.fields.get("code") == codes[0]]
    assert [(e.type, e.version) for e in events] == [
        ("assigned", 1), ("locked", 2), ("redeemed", 3)]
    others = [e for e in parse_entries(stream, entries)[0] if e not in events]

    # The latest first, then the earlier ones one by one, then all at once reversed.
    for batch in ([events[2]], [events[0]], [events[1]], events[::-1], others[::-1]):
        await apply_events(conn, batch)

    row = await conn.fetchrow("SELECT owner, times_redeemed, version FROM codes WHERE code = $1",
                              codes[0])
    assert dict(row) == {"owner": f"user-{codes[0]}", "times_redeemed": 1, "version": 3}
    assert await differences(redis, conn, book["id"]) == []
    assert sum((await event_types(conn, book["id"])).values()) == len(entries)


async def test_a_batch_partly_applied_before_goes_in_whole(
        pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A redelivered batch that holds events already in and new ones: the new
    events and their codes' states go in, the known ones are skipped."""
    book = str(uuid.uuid4())
    codes = [f"MIX-{book[:8]}-{n:02d}" for n in range(10)]
    events = [Event("s", f"{n + 1}-0", {
        "type": "assigned", "book": book, "code": code, "user": f"u{n}", "at": "1",
        "v": "1", "assignedAt": "1", "times": "0", "last": "0"})
        for n, code in enumerate(codes)]
    conn = await asyncpg.connect(pg_url)
    try:
        await apply_events(conn, events[:4])
        with caplog.at_level(logging.INFO, logger="couponsvc"):
            await apply_events(conn, events)
        stored = await conn.fetch("SELECT stream_id FROM events WHERE book_id = $1::uuid", book)
        owners = await conn.fetch("SELECT code, owner, version FROM codes WHERE book_id = $1::uuid",
                                  book)
    finally:
        await conn.close()

    assert sorted(r["stream_id"] for r in stored) == sorted(e.id for e in events)
    assert {r["code"]: (r["owner"], r["version"]) for r in owners} \
        == {code: (f"u{n}", 1) for n, code in enumerate(codes)}
    assert "batch of 10 events from s applied again: 4 were in already" in caplog.text


async def test_a_deep_backlog_is_applied_several_batches_at_a_time(
        stack: Durable, api: Api, redis: Redis, conn: asyncpg.Connection,
        pg_url: str) -> None:
    book, codes = await api.book_with_codes(60)
    stream = await stream_of(redis, book["id"])
    written = 2 + await churn(api, codes)
    pool = await db.connect(pg_url, min_size=1, max_size=4)
    try:
        config = WriterConfig(batch_size=20, parallel_batches=3, batches_per_pass=4,
                              consumer="deep-backlog")
        writer = Writer(redis, pool, Keys("cb"), config)
        # Four batches of 20, three in flight at a time, each its own
        # transaction, all acknowledged; then the pass moves on.
        assert await writer.step() == 80
        assert await unacknowledged(redis, stream) == written - 80
        while await writer.step():
            pass
    finally:
        await pool.close()

    assert await unacknowledged(redis, stream) == 0
    assert (await redis.xpending(stream, GROUP))["pending"] == 0
    assert await duplicate_events(conn) == 0
    assert sum((await event_types(conn, book["id"])).values()) == written
    assert await differences(redis, conn, book["id"]) == []


async def test_side_by_side_batches_touching_the_same_codes_do_not_deadlock(
        pg_url: str) -> None:
    """A checkout's events (assigned, locked, redeemed) land in consecutive
    batches, which the writer applies side by side: their transactions
    update the same codes rows. Taken in each batch's event order, the rows
    were locked in different orders and Postgres aborted one transaction as
    a deadlock (the soak found it: the writer then fell back to one event at
    a time and fell minutes behind). Rows are updated in code order now."""
    book = str(uuid.uuid4())
    codes = [f"RACE-{n:04d}" for n in range(400)]

    def batch(version: int, order: list[str]) -> list[Event]:
        return [Event("s", f"{version}-{n}", {
            "type": "locked", "book": book, "code": code, "user": "u", "at": "1",
            "v": str(version), "assignedAt": "1", "times": "0", "last": "0"})
            for n, code in enumerate(order)]

    first, second = await asyncpg.connect(pg_url), await asyncpg.connect(pg_url)
    try:
        for version in range(1, 21, 2):
            await asyncio.gather(apply_events(first, batch(version, codes)),
                                 apply_events(second, batch(version + 1, codes[::-1])))
        versions = {r["version"] for r in await first.fetch("SELECT version FROM codes")}
    finally:
        await first.close()
        await second.close()

    assert versions == {20}


async def test_the_writers_updates_of_loaded_codes_are_hot(
        stack: Durable, api: Api, redis: Redis, conn: asyncpg.Connection) -> None:
    """Codes rows are updated in place (HOT: no new index entries), which
    needs no indexed column to change and room on the page (migration 002:
    no owner index, pages loaded to 80%)."""
    book, codes = await api.book_with_codes(3000)  # about 40 pages
    await churn(api, codes[::10])  # a tenth of them, spread over every page
    await stack.drain()

    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await conn.fetchrow("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                              " WHERE relname = 'codes'")
    assert row["n_tup_upd"] >= len(codes[::10])
    assert row["n_tup_hot_upd"] >= 0.9 * row["n_tup_upd"]
    assert await differences(redis, conn, book["id"]) == []


async def test_a_trickle_of_events_is_applied_in_few_batches(
        stack: Durable, api: Api, redis: Redis, conn: asyncpg.Connection,
        pg_url: str) -> None:
    """After a pass that found less than a full batch the writer waits
    `linger_s` for more, so events arriving one by one share a transaction."""
    book, codes = await api.book_with_codes(6)
    stream = await stream_of(redis, book["id"])
    await stack.drain()
    registry = CollectorRegistry()
    pool = await db.connect(pg_url, min_size=1, max_size=2)
    config = WriterConfig(linger_s=1.0, consumer="trickle")
    writer = Writer(redis, pool, Keys("cb"), config, WriterMetrics(registry))
    stop = asyncio.Event()
    running = asyncio.create_task(writer.run(stop))

    def batches() -> float:
        return registry.get_sample_value("couponsvc_writer_batch_events_count") or 0.0

    try:
        assert (await api.assign_code(codes[0], "trickle-0")).status_code == 200
        await wait_for(lambda: _true_when(batches() == 1), 10, "the first event applied")
        for n, code in enumerate(codes[1:], 1):  # five events within ~0.3 s
            assert (await api.assign_code(code, f"trickle-{n}")).status_code == 200
            await asyncio.sleep(0.05)
        await wait_for(lambda: _true_when(batches() >= 2), 10, "the next batch applied")
        await asyncio.sleep(0.2)
    finally:
        stop.set()
        await running
        await pool.close()

    assert batches() == 2
    assert registry.get_sample_value("couponsvc_writer_batch_events_sum") == 6
    assert await unacknowledged(redis, stream) == 0
    assert await differences(redis, conn, book["id"]) == []


async def _true_when(value: bool) -> bool:
    return value


async def test_two_writers_at_once_apply_every_event_once(
        stack: Durable, api: Api, redis: Redis, conn: asyncpg.Connection) -> None:
    book, codes = await api.book_with_codes(250)
    stream = await stream_of(redis, book["id"])
    ports = [free_port(), free_port()]
    writers = [stack.start_writer("--metrics-port", str(port)) for port in ports]

    async def both_running() -> bool:
        try:
            return all([await applied_by(port) >= 0 for port in ports])
        except httpx.TransportError:  # not serving metrics yet
            return False
    await wait_for(both_running, CATCH_UP_SECONDS, "both writers to start")
    tally = Tally()
    await run_load(api, book["id"], tally, flows=250, concurrency=30, deadline_s=30)
    assert tally.ok("assign") == 250, tally.statuses

    async def caught_up() -> bool:
        return await unacknowledged(redis, stream) == 0
    await wait_for(caught_up, CATCH_UP_SECONDS, "the writers to catch up")
    assert all(w.poll() is None for w in writers)
    applied = [await applied_by(port) for port in ports]

    assert await duplicate_events(conn) == 0
    types = await event_types(conn, book["id"])
    assert types == {"book_created": 1, "codes_added": 1, "assigned": tally.ok("assign"),
                     "locked": tally.ok("lock"), "redeemed": tally.ok("redeem")}, tally.statuses
    assert await differences(redis, conn, book["id"]) == []
    # Both took part; an entry is applied twice only when reclaimed from a writer
    # that held it over 500 ms, and then changes nothing (checked above).
    assert all(n > 0 for n in applied) and sum(applied) >= sum(types.values()), applied


async def applied_by(port: int) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    [line] = [ln for ln in text.splitlines() if ln.startswith("couponsvc_writer_events_total ")]
    return float(line.split()[1])


async def test_sigterm_stops_a_busy_writer_cleanly(
        stack: Durable, api: Api, redis: Redis, conn: asyncpg.Connection) -> None:
    book, _ = await api.book_with_codes(300)
    stream = await stream_of(redis, book["id"])
    writer = stack.start_writer()
    async with load_running(api, book["id"], flows=300, concurrency=20,
                            deadline_s=30) as tally:
        async def applying() -> bool:
            return bool(await conn.fetchval("SELECT count(*) FROM events WHERE type = 'assigned'"))
        await wait_for(applying, CATCH_UP_SECONDS, "the writer to apply events")
        # A writer that outlives the timeout is killed, and its code is then -9.
        code = await asyncio.to_thread(stop_process, writer, signal.SIGTERM, STOP_SECONDS)
        await wait_for(flows_reached(tally, tally.flows + 20), CATCH_UP_SECONDS, "more load")
    assert code == 0, stack.writer_log(writer)[-1500:]
    assert "stopped" in stack.writer_log(writer)
    assert await unacknowledged(redis, stream) > 0  # the load went on after it stopped

    await stack.drain()
    assert await differences(redis, conn, book["id"]) == []
    assert sum((await event_types(conn, book["id"])).values()) == 2 + tally.events


async def test_sigterm_stops_a_writer_waiting_for_postgres(stack: Durable, api: Api) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"  # nobody listens
    writer = stack.start_writer(database_url=nowhere)
    await api.book_with_codes(1)

    async def backing_off() -> bool:
        return stack.writer_log(writer).count("writer paused") >= 3
    await wait_for(backing_off, CATCH_UP_SECONDS, "the writer to back off")
    assert stop_process(writer, signal.SIGTERM, timeout=STOP_SECONDS) == 0
