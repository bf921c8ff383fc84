"""Looking into Redis from a test: a client on a single server or a cluster,
and the service's keys for a book (its hash-tagged prefix and its outbox
stream)."""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio import RedisCluster as ClusterClient

from support.cluster import RedisCluster

from .servers import RedisServer


def redis_client(server: RedisServer | RedisCluster, **options: Any) -> Redis:
    """A client on either kind of server (`options` go to `from_url`); on a
    cluster it is a cluster client, which takes the same commands and routes
    them by slot."""
    if isinstance(server, RedisCluster):
        cluster = ClusterClient.from_url(server.url, decode_responses=True, **options)
        return cast(Redis, cluster)
    return Redis.from_url(server.url, decode_responses=True, **options)


async def book_keys(redis: Redis, book_id: str) -> str:
    """The `cb:{book:N}` prefix of a book's keys, N read from `cb:books`."""
    number = await redis.hget("cb:books", book_id)
    assert number is not None, f"{book_id} not in cb:books"
    return f"cb:{{book:{number}}}"


async def events(redis: Redis, book_id: str,
                 kind: str | None = None) -> list[dict[str, str]]:
    """The book's outbox stream, oldest first (only events of `kind`, when given)."""
    entries = await redis.xrange(f"{await book_keys(redis, book_id)}:events")
    found = [fields for _, fields in entries]
    return [e for e in found if kind is None or e["type"] == kind]
