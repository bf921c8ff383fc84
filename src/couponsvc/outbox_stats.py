"""How far the writer is behind: read from the streams' consumer-group state."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from couponsvc.keys import Keys
from couponsvc.metrics import ApiMetrics
from couponsvc.outbox import GROUP


async def outbox_gauges(redis: Redis, keys: Keys, metrics: ApiMetrics) -> None:
    """Sets lag (not yet delivered), pending (not yet acknowledged) and the age
    of the oldest entry not acknowledged, summed over every book's stream."""
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
    metrics.outbox_lag.set(lag)
    metrics.outbox_pending.set(pending)
    age = 0.0 if oldest_ms is None else max(0.0, time.time() - oldest_ms / 1000)
    metrics.outbox_oldest_age.set(age)
