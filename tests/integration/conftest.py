"""Real servers for the integration tests.

One redis-server and one API process serve the whole session; tests isolate
themselves with their own books, codes and user ids, so nothing is flushed.
Tests that need other settings (audience/issuer) or that break Redis get a
stack of their own. The folders that also need PostgreSQL (durability/,
failures/) share one cluster for the session, each test on a database of its
own. Every server is stopped by its own PID.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from support.cluster import RedisCluster
from support.postgres import Postgres, clone_database, migrated

from .api_client import Api, http_client
from .redis_state import redis_client
from .servers import ApiServer, RedisServer, Stack, running_stack
from .tokens import AUDIENCE, ISSUER

LOG_TAIL_CHARS = 8000


@pytest.fixture(scope="session", params=["single", "cluster"])
def redis_server(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer | RedisCluster]:
    """The whole HTTP suite runs twice: on one redis-server, and unchanged on a
    real Redis Cluster (three primaries with a replica each) on loopback."""
    server: RedisServer | RedisCluster
    if request.param == "cluster":
        server = RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    else:
        server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def is_cluster(server: RedisServer | RedisCluster) -> bool:
    return isinstance(server, RedisCluster)


@pytest.fixture(scope="session")
def api_server(redis_server: RedisServer | RedisCluster,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    extra = {"COUPONSVC_REDIS_CLUSTER": "true"} if is_cluster(redis_server) else {}
    server = ApiServer(redis_server.url, tmp_path_factory.mktemp("api"), extra).start()
    yield server
    server.stop()


@pytest.fixture
async def client(api_server: ApiServer) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(api_server.base_url) as client:
        yield client


@pytest.fixture
def api(client: httpx.AsyncClient, api_server: ApiServer) -> Api:
    return Api(client, api_server)


@pytest.fixture
async def redis(redis_server: RedisServer | RedisCluster) -> AsyncIterator[Redis]:
    """A client on the session's Redis, to check the state the API left there."""
    client = redis_client(redis_server)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL cluster for the session, with a migrated template database."""
    with migrated() as server:
        yield server


@pytest.fixture
async def pg_url(postgres: Postgres) -> str:
    """A fresh, migrated database for this test alone (a copy of the template)."""
    return await clone_database(postgres)


@pytest.fixture(scope="module")
def aud_iss_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose API requires tokens with this audience and issuer."""
    with running_stack(tmp_path_factory.mktemp("aud-iss"),
                       COUPONSVC_JWT_AUDIENCE=AUDIENCE, COUPONSVC_JWT_ISSUER=ISSUER) as stack:
        yield stack


@pytest.fixture
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack for one test alone (it may kill, pause and restart its Redis)."""
    with running_stack(tmp_path_factory.mktemp("own")) as stack:
        yield stack


def _api_servers(item: pytest.Item) -> list[ApiServer]:
    found: dict[int, ApiServer] = {}
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Api):
            value = value.server
        elif isinstance(value, Stack):
            value = value.api
        if isinstance(value, ApiServer):
            found[id(value)] = value
    return list(found.values())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    """On failure, show the end of the log of every API server the test used."""
    report = yield
    if report.failed:
        for server in _api_servers(item):
            report.sections.append((f"API server log (port {server.port})",
                                    server.log()[-LOG_TAIL_CHARS:]))
    return report
