"""Liveness, readiness and the OpenAPI document: no token needed."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from redis.asyncio import Redis, RedisCluster

from .api_client import Api
from .names import new_user

pytestmark = pytest.mark.integration

# Every route the service serves, as (method, path template).
ROUTES = {
    ("post", "/coupons"),
    ("get", "/coupons/{couponBookId}"),
    ("post", "/coupons/codes"),
    ("post", "/coupons/assign"),
    ("post", "/coupons/assign/{code}"),
    ("post", "/coupons/lock/{code}"),
    ("post", "/coupons/unlock/{code}"),
    ("post", "/coupons/redeem/{code}"),
    ("get", "/users/{userId}/coupons"),
    ("get", "/healthz"),
    ("get", "/readyz"),
}
PUBLIC = {("get", "/healthz"), ("get", "/readyz")}


async def test_healthz_needs_no_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"status": "ok"}


async def test_readyz_reports_redis_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["redis"] == "ok"


async def test_openapi_is_3_1_and_lists_every_route(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert document["openapi"].startswith("3.1")
    assert document["info"]["title"]
    listed = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert ROUTES <= listed, ROUTES - listed


async def test_openapi_operations_are_complete(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    operation_ids = set()
    for method, path in sorted(ROUTES):
        op = document["paths"][path][method]
        operation_ids.add(op["operationId"])
        assert "200" in op["responses"] or "201" in op["responses"], (method, path)
        secured = op["security"] == [{"bearerAuth": []}]
        assert secured == ((method, path) not in PUBLIC), (method, path)
        if method == "post":
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[-1] in schemas
        for name in (part[1:-1] for part in path.split("/") if part.startswith("{")):
            assert any(p["name"] == name and p["in"] == "path" for p in op["parameters"])
    assert len(operation_ids) == len(ROUTES)


async def test_openapi_documents_problem_responses(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    lock = document["paths"]["/coupons/lock/{code}"]["post"]["responses"]

    assert "application/problem+json" in lock["423"]["content"]
    assert "Retry-After" in lock["423"]["headers"]
    assert "Retry-After" in lock["503"]["headers"]
    assert {"401", "403", "404", "409"} <= set(lock)


async def test_metrics_read_the_outbox_gauges_on_either_kind_of_redis(api: Api) -> None:
    """Two pipelined round trips over every book's stream, on a single Redis
    and through the cluster client alike."""
    book, _ = await api.book_with_codes(2)
    assert (await api.assign(book["id"], new_user())).status_code == 200

    response = await api.client.get("/metrics")

    assert response.status_code == 200
    values = dict(re.findall(r"^(couponsvc_outbox_\w+) ([0-9.eE+-]+)$", response.text, re.M))
    assert values["couponsvc_outbox_gauges_up"] == "1.0"
    assert {"couponsvc_outbox_lag_events", "couponsvc_outbox_pending_events",
            "couponsvc_outbox_oldest_unacked_seconds"} <= set(values)


async def test_scrapes_at_once_share_one_reading_of_the_outbox(api: Api, redis: Redis) -> None:
    """A reading asks every book's stream (and /metrics takes no token): 50
    scrapes at once cost one reading, not 50, and each still shows the gauges."""
    book, _ = await api.book_with_codes(2)
    assert (await api.assign(book["id"], new_user())).status_code == 200
    before = await _readings(redis)

    responses = await asyncio.gather(*(api.client.get("/metrics") for _ in range(50)))

    assert {r.status_code for r in responses} == {200}
    assert all("couponsvc_outbox_gauges_up 1.0" in r.text for r in responses)
    # Far fewer than 50: one reading serves the scrapes at the same time and
    # those of the next 100 ms (a few, while 50 requests are answered).
    assert 1 <= await _readings(redis) - before <= 5


async def _readings(redis: Redis) -> int:
    """How many readings of the outbox the API has made: each starts with one
    HVALS of the index of books (nothing else in this API sends HVALS)."""
    if isinstance(redis, RedisCluster):  # every node's, by node
        by_node = await redis.info("commandstats", target_nodes=RedisCluster.ALL_NODES)
        nodes = list(by_node.values())
    else:
        nodes = [await redis.info("commandstats")]
    return sum(int(node.get("cmdstat_hvals", {}).get("calls", 0)) for node in nodes)
