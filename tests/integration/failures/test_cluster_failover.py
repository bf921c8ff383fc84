"""A Redis Cluster primary killed under load: its replica takes over, the
service keeps serving (requests during the switch may get 503 with
Retry-After, never a wrong answer), nothing acknowledged is missing in
Postgres after the drain, and verify agrees.

The API and the writer run with COUPONSVC_REDIS_WAIT_REPLICAS=1: every change
is confirmed by the replica before it is acknowledged. Without it, a change
acknowledged an instant before the kill can vanish with the primary (Redis
replicates asynchronously); that was seen in testing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.asyncio import RedisCluster as ClusterClient

from support.cluster import RedisCluster

from ..support import Api, ApiServer, new_code, new_user
from .harness import (
    Durable,
    assert_acknowledged_in_postgres,
    differences,
    duplicate_events,
    stream_of,
    wait_for,
)
from .load import Tally, flows_reached, run_load

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
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    nodes = RedisCluster(tmp_path / "cluster").start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def stack(cluster: RedisCluster, pg_url: str, tmp_path: Path) -> Iterator[Durable]:
    api = ApiServer(cluster.url, tmp_path,
                    {"COUPONSVC_DATABASE_URL": pg_url, **CLUSTER_ENV}).start()
    durable = Durable(cluster, pg_url, api, tmp_path, extra_env=CLUSTER_ENV)
    try:
        yield durable
    finally:
        durable.close()


@pytest.fixture
async def redis(cluster: RedisCluster) -> AsyncIterator[Redis]:
    client = ClusterClient.from_url(cluster.url, decode_responses=True, socket_timeout=5)
    try:
        yield cast(Redis, client)
    finally:
        await client.aclose()


async def test_a_primary_killed_under_load_fails_over_without_losing_anything(
        stack: Durable, api: Api, redis: Redis, cluster: RedisCluster,
        conn: asyncpg.Connection) -> None:
    book = await api.create_book(lockTtlSeconds=3600)
    await api.upload(book["id"], [new_code() for _ in range(CODES)])
    stream = await stream_of(redis, book["id"])
    victim = cast(ClusterClient, redis).get_node_from_key(stream).port
    assert victim in cluster.primaries()
    writer = stack.start_writer()

    tally = Tally()
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(api, book["id"], tally, flows=FLOWS,
                                        concurrency=CONCURRENCY, deadline_s=LOAD_SECONDS,
                                        stop=stop, pause_on_error_s=0.2))
    try:
        await wait_for(flows_reached(tally, 150), LOAD_SECONDS, "the load to start")
        cluster.kill(victim)  # the book's primary: its replica must take over
        probe = new_user()

        async def serving() -> bool:
            return (await api.assign(book["id"], probe)).status_code == 200
        await wait_for(serving, FAILOVER_SECONDS, "the API to serve after failover",
                       interval=0.2)
        assert victim not in cluster.primaries()
        at_resume = tally.flows
        await wait_for(flows_reached(tally, at_resume + 100), LOAD_SECONDS,
                       "the load to go on after the failover")
    finally:
        stop.set()
        await load
    assert not [s for s in tally.statuses if s.startswith("error")], tally.statuses
    assert {int(s.split()[1]) for s in tally.statuses} <= EXPECTED, tally.statuses

    await assert_acknowledged_in_postgres(stack, writer, redis, conn, stream, book["id"], tally,
                                          CATCH_UP_SECONDS)
    assert await differences(redis, conn, book["id"]) == []
    assert await duplicate_events(conn) == 0
    await stack.verify()
