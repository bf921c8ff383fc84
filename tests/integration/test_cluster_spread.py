"""On a Redis Cluster, books spread over the primaries and a user's codes are
listed across them (the rest of the suite runs on the cluster unchanged)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio import RedisCluster as ClusterClient

from support.cluster import RedisCluster

from .api_client import Api
from .names import new_user
from .servers import ApiServer

pytestmark = pytest.mark.integration


async def test_books_land_on_different_primaries_and_listing_spans_them(
    redis_server: object, api: Api, redis: Redis, api_server: ApiServer
) -> None:
    if not isinstance(redis_server, RedisCluster):
        pytest.skip("a cluster property; the single-node run has one primary")
    assert isinstance(redis, ClusterClient)
    user = new_user()
    primary_of_book: dict[str, int] = {}
    codes: set[str] = set()
    for _ in range(12):
        book, _ = await api.book_with_codes(2)
        number = await redis.hget("cb:books", book["id"])
        primary_of_book[book["id"]] = redis.get_node_from_key(f"cb:{{book:{number}}}:meta").port
        assigned = await api.assign(book["id"], user, token=api_server.writer)
        assert assigned.status_code == 200, assigned.text
        codes.add(assigned.json()["code"])

    assert len(set(primary_of_book.values())) >= 2, primary_of_book
    listed: list[dict[str, object]] = []
    url: str | None = f"/users/{user}/coupons?limit=5"
    while url:
        page = await api.client.get(url, headers={"Authorization": f"Bearer {api_server.writer}"})
        assert page.status_code == 200, page.text
        listed += page.json()
        url = page.links.get("next", {}).get("url")
    assert {c["code"] for c in listed} == codes
    assert {c["couponBookId"] for c in listed} == set(primary_of_book)
