"""Real processes for the write-behind failure tests.

Each test gets its own redis-server, its own PostgreSQL database (`pg_url`,
from the parent conftest: cloned from a migrated template in one cluster for
the session), its own API process with COUPONSVC_DATABASE_URL set, and the
writer processes it starts. Tests kill and restart these freely; each one is
stopped by its own PID when the test ends, whether it passed or not. A module
overrides `redis_server` and `extra_env` to run all of this on another kind of
Redis (append-only, a cluster).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from support.cluster import RedisCluster

from ..api_client import Api, http_client
from ..redis_state import redis_client
from ..servers import ApiServer, RedisServer, started
from .harness import Durable

# A request slower than this counts as hanging: the client gives up.
CLIENT_TIMEOUT_SECONDS = 10.0
LOG_TAIL_CHARS = 8000


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """This test's own redis-server (no persistence; a module may override it)."""
    with started(RedisServer(tmp_path / "redis")) as server:
        yield server


@pytest.fixture
def extra_env() -> dict[str, str]:
    """Settings the API and the writers get on top of the suite's (none; a
    module may override it)."""
    return {}


@pytest.fixture
def stack(redis_server: RedisServer | RedisCluster, pg_url: str, extra_env: dict[str, str],
          tmp_path: Path) -> Iterator[Durable]:
    """The API on this test's Redis and Postgres; writers are started by the test."""
    api = ApiServer(redis_server.url, tmp_path,
                    {"COUPONSVC_DATABASE_URL": pg_url, **extra_env}).start()
    durable = Durable(redis_server, pg_url, api, tmp_path, extra_env=extra_env)
    try:
        yield durable
    finally:
        durable.close()


@pytest.fixture
async def api(stack: Durable) -> AsyncIterator[Api]:
    async with http_client(stack.api.base_url, timeout=CLIENT_TIMEOUT_SECONDS) as client:
        yield Api(client, stack.api)


@pytest.fixture
async def redis(redis_server: RedisServer | RedisCluster) -> AsyncIterator[Redis]:
    client = redis_client(redis_server, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def conn(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(pg_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    """On failure, show the end of the logs of the writers the test started (the
    parent conftest shows the API's)."""
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Durable):
                report.sections.append(("writer logs", value.writer_logs()[-LOG_TAIL_CHARS:]))
    return report
