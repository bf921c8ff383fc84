"""How far the writer is behind: read from the streams' consumer-group state."""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisClusterException, RedisError

from couponsvc.keys import Keys
from couponsvc.metrics import OutboxGauges, OutboxReading
from couponsvc.outbox import GROUP

log = logging.getLogger("couponsvc")

# /metrics must answer well inside Prometheus's scrape timeout (10 s by
# default), or the scrape loses the HTTP counters too, the 503s of an outage
# among them. A Redis that takes longer than readiness allows a PING (1 s) is
# down, so the gauges are left out rather than waited for.
GAUGES_TIMEOUT_SECONDS = 1.0


async def refresh_outbox_gauges(redis: Redis, keys: Keys, gauges: OutboxGauges) -> None:
    """Reads the gauges for this scrape; without Redis, leaves them out
    (`couponsvc_outbox_gauges_up 0`) instead of failing the scrape."""
    try:
        async with asyncio.timeout(GAUGES_TIMEOUT_SECONDS):
            gauges.reading = await read_outbox(redis, keys)
    except (RedisError, RedisClusterException, TimeoutError) as exc:
        log.warning("outbox gauges left out of /metrics: %s", type(exc).__name__)
        gauges.reading = None


async def read_outbox(redis: Redis, keys: Keys) -> OutboxReading:
    """Lag (not yet delivered), pending (not yet acknowledged) and the age of
    the oldest entry not acknowledged, summed over every book's stream."""
    lag = pending = 0
    oldest_ms: int | None = None
    for number in await redis.hvals(keys.books):
        stream = keys.book(int(number)).events
        group = next((g for g in await redis.xinfo_groups(stream) if g["name"] == GROUP), None)
        first_unacked: str | None = None
        if group is None:
            lag += int(await redis.xlen(stream))
            head = await redis.xrange(stream, count=1)
            first_unacked = str(head[0][0]) if head else None
        else:
            lag += int(group.get("lag") or 0)
            pending += int(group["pending"])
            if group["pending"]:
                first_unacked = str((await redis.xpending(stream, GROUP))["min"])
            else:
                after = await redis.xrange(stream, min=f"({group['last-delivered-id']}", count=1)
                first_unacked = str(after[0][0]) if after else None
        if first_unacked is not None:
            ms = int(first_unacked.split("-")[0])
            oldest_ms = ms if oldest_ms is None else min(oldest_ms, ms)
    age = 0.0 if oldest_ms is None else max(0.0, time.time() - oldest_ms / 1000)
    return OutboxReading(lag=lag, pending=pending, oldest_age_seconds=age)
