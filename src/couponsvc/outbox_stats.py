"""How far the writer is behind: read from the streams' consumer-group state."""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from couponsvc.keys import Keys
from couponsvc.metrics import OutboxGauges, OutboxReading
from couponsvc.outbox import GROUP

log = logging.getLogger("couponsvc")

# /metrics must answer well inside Prometheus's scrape timeout (10 s by
# default), or the scrape loses the HTTP counters too, the 503s of an outage
# among them. A Redis that takes longer than readiness allows a PING (1 s) is
# down, so the gauges are left out rather than waited for.
GAUGES_TIMEOUT_SECONDS = 1.0
# A reading costs Redis and the API's event loop work for every book, and
# /metrics takes no token: scrapes closer together than this share one reading
# (the bench samples every 100 ms), and scrapes at the same time one read.
READING_REUSE_SECONDS = 0.1
# What an outage looks like, as opposed to a bug.
REDIS_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, TimeoutError, ClusterDownError,
                     RedisClusterException)


async def refresh_outbox_gauges(redis: Redis, keys: Keys, gauges: OutboxGauges) -> None:
    """Reads the gauges for this scrape, unless a reading is fresh enough
    (READING_REUSE_SECONDS) or under way, which it then shares."""
    fresh = gauges.reading is not None \
        and time.monotonic() - gauges.reading.read_at < READING_REUSE_SECONDS
    if fresh:
        return
    if gauges.refreshing is None:
        gauges.refreshing = asyncio.ensure_future(_read_gauges(redis, keys, gauges))
        gauges.refreshing.add_done_callback(lambda _: setattr(gauges, "refreshing", None))
    await asyncio.shield(gauges.refreshing)


async def _read_gauges(redis: Redis, keys: Keys, gauges: OutboxGauges) -> None:
    """Without a reading (Redis down, or a bug), the gauges are left out
    (`couponsvc_outbox_gauges_up 0`) instead of failing the scrape and the
    HTTP counters with it."""
    gauges.reading = None
    try:
        async with asyncio.timeout(GAUGES_TIMEOUT_SECONDS):
            gauges.reading = await read_outbox(redis, keys)
    except REDIS_UNAVAILABLE as exc:
        log.warning("outbox gauges left out of /metrics: Redis unavailable: %r", exc)
    except RedisError:
        log.exception("outbox gauges left out of /metrics: unexpected Redis error")


async def read_outbox(redis: Redis, keys: Keys) -> OutboxReading:
    """Lag (not yet delivered), pending (not yet acknowledged) and the age of
    the oldest entry not acknowledged, summed over every book's stream. Two
    pipelined round trips whatever the number of books: each stream's group
    state, then what that state says to read next."""
    streams = [keys.book(int(number)).events for number in await redis.hvals(keys.books)]
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xinfo_groups(stream)
        groups = [next((g for g in found if g["name"] == GROUP), None)
                  for found in await pipe.execute()]
    async with redis.pipeline(transaction=False) as pipe:
        for stream, group in zip(streams, groups, strict=True):
            if group is None:  # no writer has read it yet: all of it is lag
                pipe.xlen(stream)
                pipe.xrange(stream, count=1)
            elif group["pending"]:
                pipe.xpending(stream, GROUP)
            else:
                pipe.xrange(stream, min=f"({group['last-delivered-id']}", count=1)
        replies = iter(await pipe.execute())
    lag = pending = 0
    oldest_ms: int | None = None
    for group in groups:
        first_unacked: str | None
        if group is None:
            lag += int(next(replies))
            head = next(replies)
            first_unacked = str(head[0][0]) if head else None
        elif group["pending"]:
            lag += int(group.get("lag") or 0)
            pending += int(group["pending"])
            first_unacked = str(next(replies)["min"])
        else:
            lag += int(group.get("lag") or 0)
            after = next(replies)
            first_unacked = str(after[0][0]) if after else None
        if first_unacked is not None:
            ms = int(first_unacked.split("-")[0])
            oldest_ms = ms if oldest_ms is None else min(oldest_ms, ms)
    return OutboxReading(lag=lag, pending=pending, oldest_unacked_ms=oldest_ms,
                         read_at=time.monotonic())
