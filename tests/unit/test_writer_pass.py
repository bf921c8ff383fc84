"""How one writer pass over a stream schedules its batches: how many it reads,
how many run at once, and what a failure or a cancellation mid-pass leaves.

The batches' own work (Postgres, XACK) is replaced by gates the test opens, so
the order of events is the test's, not the scheduler's; the integration suite
(failures/test_writer_semantics.py) runs the same passes against real servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from couponsvc.keys import Keys
from couponsvc.writer import Writer, WriterConfig, _entries_of

pytestmark = pytest.mark.unit
STREAM = "cb:{book:1}:events"


class ScriptedWriter(Writer):
    """A writer whose reads come from `reads` (a list of batch sizes, or an
    exception to raise) and whose batches finish when the test says so."""

    def __init__(self, config: WriterConfig, reads: list[int | Exception]) -> None:
        super().__init__(cast(Redis, None), cast(asyncpg.Pool, None), Keys("cb"), config)
        self.reads = reads
        self.release = asyncio.Event()
        self.running = 0
        self.most_at_once = 0
        self.finished: list[int] = []
        self.cancelled = 0

    async def _next_entries(self, stream: str) -> tuple[list[Any], bool]:
        return await self._read_new(stream), False

    async def _read_new(self, stream: str, count: int | None = None) -> list[Any]:
        if not self.reads:
            return []
        size = self.reads.pop(0)
        if isinstance(size, Exception):
            raise size
        return [(f"1-{n}", {}) for n in range(size)]

    async def _settle(self, stream: str, entries: Sequence[Any]) -> tuple[bool, int]:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        self.finished.append(len(entries))
        return True, len(entries)


def config(**overrides: Any) -> WriterConfig:
    return WriterConfig(**{"batch_size": 10, "parallel_batches": 2, "batches_per_pass": 3,
                           "consumer": "test", **overrides})


async def test_a_deep_backlog_runs_parallel_batches_up_to_the_pass_limit() -> None:
    writer = ScriptedWriter(config(), [10] * 6)
    writer.release.set()

    assert await writer._drain_group(STREAM) == 30
    assert writer.finished == [10, 10, 10]  # batches_per_pass
    assert writer.most_at_once <= 2  # parallel_batches
    assert len(writer.reads) == 3  # the rest waits for the next pass
    assert STREAM not in writer._retry_own


async def test_a_short_batch_ends_the_pass() -> None:
    writer = ScriptedWriter(config(batches_per_pass=10), [10, 4, 10])
    writer.release.set()

    assert await writer._drain_group(STREAM) == 14
    assert writer.reads == [10]  # not read: the short batch said the backlog ended


async def test_a_failed_read_waits_for_the_batches_in_flight_then_raises() -> None:
    writer = ScriptedWriter(config(), [10, RedisConnectionError("gone")])
    drain = asyncio.create_task(writer._drain_group(STREAM))
    await asyncio.sleep(0.01)
    assert not drain.done()  # the first batch is still running

    writer.release.set()
    with pytest.raises(RedisConnectionError):
        await drain
    assert writer.finished == [10]  # it ran to its end before the error surfaced
    assert STREAM in writer._retry_own  # its entries are read again next pass


async def test_cancelling_a_pass_stops_every_batch_in_flight() -> None:
    writer = ScriptedWriter(config(), [10, 10, 10])
    drain = asyncio.create_task(writer._drain_group(STREAM))
    await asyncio.sleep(0.01)
    assert writer.running == 2

    drain.cancel()
    with pytest.raises(asyncio.CancelledError):
        await drain
    await asyncio.sleep(0)
    assert writer.cancelled == 2 and writer.running == 0
    assert writer.finished == []
    assert STREAM in writer._retry_own


@pytest.mark.parametrize("reply", [
    [["s", [("1-0", {"a": "b"}), ("1-1", {"c": "d"})]]],  # RESP2
    {"s": [("1-0", {"a": "b"}), ("1-1", {"c": "d"})]},  # RESP3, as redis-py 5-7 parse it
    {"s": [[("1-0", {"a": "b"}), ("1-1", {"c": "d"})]]},  # RESP3, as redis-py 8 parses it
])
def test_entries_are_read_from_every_reply_shape(reply: Any) -> None:
    assert _entries_of(reply) == [("1-0", {"a": "b"}), ("1-1", {"c": "d"})]
