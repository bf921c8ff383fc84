"""The auto-pipelining layers (redis-py pipelines, and the small RESP client)
against a real redis-server."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

from couponsvc.coalesce import (
    MAX_BATCH,
    MAX_IN_FLIGHT,
    Coalescer,
    CommandPipe,
    Replicas,
    ReplicationLagging,
)
from couponsvc.resp import RespPipeline
from couponsvc.scripts import Scripts

from .servers import RedisServer, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path).start()
    yield redis
    redis.stop()


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(server.url, decode_responses=True, socket_timeout=1,
                           socket_connect_timeout=1)
    yield redis
    await redis.aclose()


@pytest.fixture(params=["redis-py", "resp"])
async def pipe(request: pytest.FixtureRequest, server: RedisServer,
               client: Redis) -> AsyncIterator[CommandPipe]:
    if request.param == "redis-py":
        yield Coalescer(client)
        return
    resp = RespPipeline(server.url.replace("/0", "/3"), timeout=1)  # also proves SELECT
    yield resp
    await resp.aclose()


async def test_concurrent_commands_share_batches_and_keep_their_order(client: Redis) -> None:
    """Each caller must get the reply to its own command: a reply handed to the
    wrong future would give one task another's code or lock token."""
    coalescer = Coalescer(client)
    sent: list[int] = []
    original = client.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        sent.append(1)
        return original(*args, **kwargs)

    client.pipeline = counting_pipeline  # type: ignore[method-assign]

    # Fewer tasks than a batch holds, all queued in one loop turn: one pipeline,
    # and the n-th task queued gets the n-th increment.
    one_batch = MAX_BATCH // 2
    replies = await asyncio.gather(*(coalescer.execute("INCR", "one") for _ in range(one_batch)))

    assert replies == list(range(1, one_batch + 1))
    assert len(sent) == 1

    # More than a batch holds: full batches go at once, each in the order queued
    # (separate batches may run on separate connections, in any order).
    replies = await asyncio.gather(*(coalescer.execute("INCR", "many") for _ in range(500)))

    assert len(sent) == 1 + 2  # not one round trip per command
    batches = [replies[:MAX_BATCH], replies[MAX_BATCH:]]
    assert all(batch == sorted(batch) for batch in batches), batches
    assert sorted(replies) == list(range(1, 501))  # every task its own reply


async def test_an_error_reply_fails_only_its_own_command(pipe: CommandPipe) -> None:
    coalescer = pipe
    await coalescer.execute("SET", "text", "not a number")

    results = await asyncio.gather(
        coalescer.execute("INCR", "n"),
        coalescer.execute("INCR", "text"),
        coalescer.execute("INCR", "n"),
        return_exceptions=True,
    )

    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], ResponseError)


async def test_set_nx_get_returns_the_value_already_there(pipe: CommandPipe) -> None:
    coalescer = pipe

    first = await coalescer.execute("SET", "k", "v1", "NX", "GET", get=True)
    second = await coalescer.execute("SET", "k", "v2", "NX", "GET", get=True)

    assert first is None and second == "v1"


async def test_a_dead_server_fails_every_waiting_command_then_service_resumes(
    server: RedisServer, pipe: CommandPipe
) -> None:
    coalescer = pipe
    assert await coalescer.execute("PING") in (True, "PONG")
    server.kill()

    results = await asyncio.wait_for(
        asyncio.gather(*(coalescer.execute("INCR", "n") for _ in range(20)),
                       return_exceptions=True),
        timeout=10,
    )
    assert all(isinstance(r, ConnectionError | TimeoutError) for r in results), results

    server.start()  # same port: the client reconnects by itself
    assert await coalescer.execute("INCR", "n") == 1


async def test_a_paused_server_times_out_instead_of_hanging(
    server: RedisServer, pipe: CommandPipe
) -> None:
    coalescer = pipe
    await coalescer.execute("PING")
    server.pause()
    try:
        with pytest.raises((TimeoutError, ConnectionError)):
            await asyncio.wait_for(coalescer.execute("PING"), timeout=10)
    finally:
        server.resume()


async def test_a_stall_longer_than_the_pool_fails_no_command(server: RedisServer) -> None:
    """While Redis answers no one, each event-loop turn's commands would be a
    batch of their own holding a connection: more turns than the pool has
    connections must wait for a batch to finish, not fail for want of one
    (redis-py's plain pool, like its cluster client's, fails at once). What
    piles up meanwhile still leaves in batches of at most MAX_BATCH."""
    pool_size = MAX_IN_FLIGHT + 8
    turns = 3 * pool_size
    piled_up = 3 * MAX_BATCH
    redis = Redis.from_url(server.url, decode_responses=True, socket_timeout=5,
                           max_connections=pool_size)
    batch_sizes = record_batch_sizes(redis)
    coalescer = Coalescer(redis)
    try:
        await redis.execute_command("CLIENT", "PAUSE", 500, "ALL")
        replies = []
        for _ in range(turns):
            replies.append(coalescer.submit("INCR", "stalled"))
            await asyncio.sleep(0)  # the next command is a batch of its own
        replies += [coalescer.submit("INCR", "stalled") for _ in range(piled_up)]
        outcomes = await asyncio.gather(*replies, return_exceptions=True)
        assert [o for o in outcomes if not isinstance(o, int)] == []
        assert sorted(outcomes) == list(range(1, turns + piled_up + 1))
        assert max(batch_sizes) == MAX_BATCH
    finally:
        await redis.aclose()


def record_batch_sizes(redis: Redis) -> list[int]:
    """The number of commands in each pipeline `redis` executes from now on."""
    sizes: list[int] = []
    original = redis.pipeline

    def recording_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = original(*args, **kwargs)
        execute = pipe.execute

        async def recorded_execute(*e_args: Any, **e_kwargs: Any) -> Any:
            sizes.append(len(pipe.command_stack))
            return await execute(*e_args, **e_kwargs)

        pipe.execute = recorded_execute  # type: ignore[method-assign]
        return pipe

    redis.pipeline = recording_pipeline  # type: ignore[method-assign]
    return sizes


async def test_a_cancelled_caller_does_not_disturb_the_batch(pipe: CommandPipe) -> None:
    coalescer = pipe
    cancelled = asyncio.ensure_future(coalescer.execute("INCR", "c"))
    kept = asyncio.ensure_future(coalescer.execute("INCR", "c"))
    await asyncio.sleep(0)
    cancelled.cancel()

    reply = await kept
    stored = await coalescer.execute("GET", "c")

    assert reply in (1, 2)
    # The reply is the kept command's own: whether or not the cancelled INCR
    # still ran, the kept one ran last, so it answered what GET reads now.
    assert stored == str(reply)


async def test_one_connection_runs_commands_in_the_order_queued(server: RedisServer) -> None:
    # The RESP client's promise; redis-py batches may use several connections.
    pipe = RespPipeline(server.url, timeout=1)
    replies = await asyncio.gather(*(pipe.execute("INCR", "ordered") for _ in range(2000)))
    await pipe.aclose()

    assert replies == list(range(1, 2001))


async def test_an_unexpected_failure_to_connect_strands_no_later_command(
        server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connect that fails in a way nobody foresaw fails the commands waiting
    for it; the next command opens a connection of its own and is answered."""
    resp = RespPipeline(server.url, timeout=1)
    failures = iter([RuntimeError("unforeseen")])
    open_connection = resp._open

    async def failing_once() -> Any:
        for failure in failures:
            raise failure
        return await open_connection()

    monkeypatch.setattr(resp, "_open", failing_once)
    try:
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(resp.execute("PING"), timeout=5)
        assert await asyncio.wait_for(resp.execute("INCR", "after"), timeout=5) == 1
    finally:
        await resp.aclose()


async def test_batches_queued_while_connecting_go_before_later_ones(
        server: RedisServer) -> None:
    # Connected, a batch is written at once; batches still waiting for the
    # connection to open must not be overtaken by those.
    pipe = RespPipeline(server.url, timeout=1, max_batch=7)
    futures: list[asyncio.Future[Any]] = []
    for _ in range(200):  # one turn each: the connection opens somewhere in between
        futures += [pipe.submit("INCR", "ordered") for _ in range(10)]
        await asyncio.sleep(0)
    replies = await asyncio.gather(*futures)
    await pipe.aclose()

    assert replies == list(range(1, 2001))


async def test_a_script_missing_on_the_server_is_a_noscript_error(pipe: CommandPipe) -> None:
    with pytest.raises(NoScriptError):
        await pipe.execute("EVALSHA", "0" * 40, 0)


@pytest.fixture
def replica(server: RedisServer, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A replica of `server`, connected and in sync, stopped by its own PID."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--replicaof", "127.0.0.1",
         str(server.port), "--repl-diskless-load", "disabled"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while b"master_link_status:up" not in subprocess.run(
            ["redis-cli", "-p", str(port), "INFO", "replication"], capture_output=True).stdout:
        assert time.monotonic() < deadline, "the replica did not sync"
        time.sleep(0.05)
    yield process
    process.send_signal(signal.SIGCONT)
    process.terminate()
    process.wait(timeout=10)


def _pipe(kind: str, server: RedisServer, client: Redis, replicas: Replicas) -> CommandPipe:
    if kind == "redis-py":
        return Coalescer(client, replicas=replicas)
    return RespPipeline(server.url, timeout=2, replicas=replicas)


async def _close(pipe: CommandPipe) -> None:
    if isinstance(pipe, RespPipeline):
        await pipe.aclose()


@pytest.mark.parametrize("kind", ["redis-py", "resp"])
async def test_a_change_waits_for_the_replica(
    kind: str, server: RedisServer, client: Redis, replica: subprocess.Popen[bytes]
) -> None:
    pipe = _pipe(kind, server, client, Replicas(count=1, timeout_ms=2000))

    assert await pipe.execute("INCR", "d", durable=True) == 1
    await _close(pipe)


@pytest.mark.parametrize("kind", ["redis-py", "resp"])
async def test_a_change_the_replica_does_not_confirm_is_not_acknowledged(
    kind: str, server: RedisServer, client: Redis, replica: subprocess.Popen[bytes]
) -> None:
    pipe = _pipe(kind, server, client, Replicas(count=1, timeout_ms=100))
    replica.send_signal(signal.SIGSTOP)  # connected, but silent: WAIT times out

    durable, plain = await asyncio.gather(pipe.execute("INCR", "d", durable=True),
                                          pipe.execute("INCR", "p"), return_exceptions=True)
    await _close(pipe)

    assert isinstance(durable, ReplicationLagging)
    assert plain == 1
    assert await client.get("d") == "1"  # the change did happen on the primary


@pytest.mark.parametrize("kind", ["redis-py", "resp"])
async def test_a_primary_without_replicas_still_acknowledges(
    kind: str, server: RedisServer, client: Redis
) -> None:
    # Nothing to wait for (a promoted replica whose old primary is gone): the
    # first change learns that from ROLE, later ones wait for no replica.
    pipe = _pipe(kind, server, client, Replicas(count=1, timeout_ms=300))

    assert await pipe.execute("INCR", "d", durable=True) == 1
    assert await pipe.execute("INCR", "d", durable=True) == 2
    await _close(pipe)


async def test_a_batch_that_finds_its_script_gone_loads_it_once(
        pipe: CommandPipe, client: Redis) -> None:
    """A restarted or failed-over Redis has no scripts, so every call of a
    batch gets NOSCRIPT at once. Each loaded the script itself, each on a
    pooled connection of its own: past redis-py's 100 the pool refused, and
    those calls failed (503s) on a Redis that was fine."""
    scripts = Scripts(client, pipe)
    await scripts.load()
    await client.script_flush()
    await client.config_resetstat()

    replies = await asyncio.gather(*(scripts.run("read_book", [
        "cb:{book:1}:meta", "cb:{book:1}:free", "cb:{book:1}:locks"]) for _ in range(300)))

    assert replies == [["book_not_found"]] * 300
    stats = await client.info("commandstats")
    assert stats["cmdstat_script|load"]["calls"] == 1
