"""A Redis Cluster primary killed under load: its replica takes over, the
service keeps serving (requests during the switch may get 503 with
Retry-After, never a wrong answer), nothing acknowledged is missing in
Postgres after the drain, and verify agrees.

The API and the writer run with COUPONSVC_REDIS_WAIT_REPLICAS=1: every change
is confirmed by the replica before it is acknowledged. Without it, a change
acknowledged an instant before the kill can vanish with the primary (Redis
replicates asynchronously); that was seen in testing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.asyncio import RedisCluster as ClusterClient

from support.cluster import RedisCluster

from ..api_client import Api
from ..names import new_code, new_user
from ..servers import started
from .harness import (
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

CLUSTER_ENV = {"COUPONSVC_REDIS_CLUSTER": "true", "COUPONSVC_REDIS_WAIT_REPLICAS": "1"}
CODES = 900
FLOWS = 1200
CONCURRENCY = 20
LOAD_SECONDS = 60.0
FAILOVER_SECONDS = 30.0
CATCH_UP_SECONDS = 30.0
# Success, the book running out, a lock held by the racing request, or a fast 503.
EXPECTED = {200, 409, 423, 503}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisCluster]:
    """A local Redis Cluster, three primaries with a replica each, in place of
    the folder's redis-server: the API, the writers and `redis` all use it."""
    with started(RedisCluster(tmp_path / "cluster")) as cluster:
        yield cluster


@pytest.fixture
def extra_env() -> dict[str, str]:
    """Cluster mode, and every change confirmed by the replica before it is acknowledged."""
    return CLUSTER_ENV


async def test_a_primary_killed_under_load_fails_over_without_losing_anything(
        stack: Durable, api: Api, redis: Redis, redis_server: RedisCluster,
        conn: asyncpg.Connection) -> None:
    book = await api.create_book(lockTtlSeconds=3600)
    await api.upload(book["id"], [new_code() for _ in range(CODES)])
    stream = await stream_of(redis, book["id"])
    victim = cast(ClusterClient, redis).get_node_from_key(stream).port
    assert victim in redis_server.primaries()
    writer = stack.start_writer()

    async with load_running(api, book["id"], flows=FLOWS, concurrency=CONCURRENCY,
                            deadline_s=LOAD_SECONDS, pause_on_error_s=0.2) as tally:
        await wait_for(flows_reached(tally, 150), LOAD_SECONDS, "the load to start")
        redis_server.kill(victim)  # the book's primary: its replica must take over
        await wait_until_serving(api, book["id"], new_user(), FAILOVER_SECONDS,
                                 "the API to serve after failover")
        assert victim not in redis_server.primaries()
        at_resume = tally.flows
        await wait_for(flows_reached(tally, at_resume + 100), LOAD_SECONDS,
                       "the load to go on after the failover")
    assert not [s for s in tally.statuses if s.startswith("error")], tally.statuses
    assert {int(s.split()[1]) for s in tally.statuses} <= EXPECTED, tally.statuses

    await assert_acknowledged_in_postgres(stack, writer, redis, conn, stream, book["id"], tally,
                                          CATCH_UP_SECONDS)
    assert await differences(redis, conn, book["id"]) == []
    assert await duplicate_events(conn) == 0
    await stack.verify()
