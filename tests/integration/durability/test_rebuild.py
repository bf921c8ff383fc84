"""rebuild: Redis reconstructed from Postgres equals the live state, and serves."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from couponsvc import errors
from couponsvc.rebuild import RedisNotEmpty
from couponsvc.schemas import CreateBook

from .conftest import OPS, Cli, Scenario, Service

pytestmark = pytest.mark.integration

# Redis stamps these with its own clock; Postgres has the API host's.
CLOCK_FIELDS = ("createdAt", "updatedAt")


async def lose_redis(service: Service) -> None:
    """What a new, empty Redis looks like: no keys, no scripts."""
    await service.redis.flushdb()
    await service.redis.script_flush()


async def snapshot(service: Service, scenario: Scenario) -> dict[str, Any]:
    """Every durable key of both books, read back as plain values."""
    redis, keys = service.redis, service.keys
    state: dict[str, Any] = {
        "books": await redis.hgetall(keys.books),
        "book-seq": await redis.get(keys.book_seq),
    }
    for book_id in (scenario.single, scenario.multi):
        book = keys.book(await service.number(book_id))
        meta = await redis.hgetall(book.meta)
        state[book.meta] = {k: v for k, v in meta.items() if k not in CLOCK_FIELDS}
        state[book.free] = await redis.smembers(book.free)
        state[book.assigned] = await redis.hgetall(book.assigned)
        for user in scenario.users:
            state[book.user(user)] = await redis.zrange(book.user(user), 0, -1, withscores=True)
        for code in [*state[book.free], *state[book.assigned]]:
            state[f"directory {code}"] = await redis.hget(keys.directory(code), code)
    for user in scenario.users:
        state[keys.user_books(user)] = await redis.smembers(keys.user_books(user))
    return state


async def test_rebuild_reproduces_the_lost_state(service: Service, scenario: Scenario) -> None:
    before = await snapshot(service, scenario)
    single = service.keys.book(await service.number(scenario.single))
    created = int(await service.redis.hget(single.meta, "createdAt") or 0)
    await lose_redis(service)

    summary = await service.rebuild()

    assert (summary.books, summary.codes, summary.assigned) == (2, 15, 5)
    assert await snapshot(service, scenario) == before
    # Postgres's created_at comes from the API host's clock, not Redis's.
    assert abs(int(await service.redis.hget(single.meta, "createdAt") or 0) - created) < 5000
    # Locks are not durable: none come back.
    assert await service.redis.exists(single.locks, single.lock(scenario.locked)) == 0
    assert await service.verify() == []


async def test_rebuild_in_small_chunks(service: Service, scenario: Scenario) -> None:
    big = await service.books.create(CreateBook(name="Big", maxPerUser=1))
    await service.books.generate(big.id, "B-######", 2500)
    for user in ("u1", "u2", "u3"):
        await service.coupons.assign_random(OPS, big.id, user, None)
    await service.drain()
    await lose_redis(service)

    summary = await service.rebuild(chunk=700)

    assert (summary.books, summary.codes, summary.assigned) == (3, 2515, 8)
    assert await service.verify() == []


async def test_the_rebuilt_service_keeps_working(service: Service, scenario: Scenario) -> None:
    await lose_redis(service)
    await service.rebuild()
    svc = service.fresh()  # a restarted API and writer: no caches, scripts not loaded
    coupons = svc.coupons

    # maxPerUser still counts the codes alice held before the loss.
    with pytest.raises(errors.UserLimitReached):
        await coupons.assign_random(OPS, scenario.single, "alice", None)
    # The remaining free codes are handed out, each once, then the book is exhausted.
    handed = {(await coupons.assign_random(OPS, scenario.single, f"new-{i}", None)).coupon.code
              for i in range(len(scenario.free_single))}
    assert handed == set(scenario.free_single)
    with pytest.raises(errors.BookExhausted):
        await coupons.assign_random(OPS, scenario.single, "late", None)
    # Redemption limits carry over: one per code here, three in the multi book.
    with pytest.raises(errors.CodeRedeemed):
        await coupons.redeem(OPS, scenario.redeemed, "alice", None, None)
    third, _ = await coupons.redeem(OPS, scenario.twice, "carol", None, None)
    assert (third.timesRedeemed, third.redemptionsLeft) == (3, 0)
    with pytest.raises(errors.CodeRedeemed):
        await coupons.redeem(OPS, scenario.twice, "carol", None, None)
    # The lost lock no longer blocks its owner; the versions go on from Postgres's.
    await coupons.lock(OPS, scenario.locked, "bob", None)
    # New books continue the numbering.
    book = await svc.books.create(CreateBook(name="After"))
    assert (await svc.store.book(book.id)).number == 3

    await svc.drain()
    assert await svc.verify() == []


async def test_a_writer_that_ran_through_the_loss_keeps_draining(service: Service,
                                                                  scenario: Scenario) -> None:
    await lose_redis(service)
    await service.rebuild()
    # The API's services and writer from before the loss, not restarted.
    await service.coupons.assign_code(OPS, scenario.free_multi[0], "zed", None, None)

    await service.drain()

    assert await service.verify() == []
    group = (await service.redis.xinfo_groups(
        service.keys.book(await service.number(scenario.multi)).events))[0]
    assert (group["name"], group["pending"], group["lag"]) == ("writer", 0, 0)


async def test_rebuild_refuses_a_redis_that_has_books(service: Service, scenario: Scenario,
                                                      cli_run: Cli) -> None:
    with pytest.raises(RedisNotEmpty):
        await service.rebuild()
    refused = await cli_run("rebuild")
    assert refused.status == 2
    assert "--force" in refused.err and refused.out == ""

    # Stale state is replaced by --force, not merged.
    book = service.keys.book(await service.number(scenario.single))
    await service.redis.sadd(book.free, "STALE-1")
    await service.redis.hset(book.meta, "total", 99)
    assert await service.verify() != []
    forced = await cli_run("rebuild", "--force")
    assert forced.status == 0
    assert "rebuilt 2 book(s), 15 code(s), 5 assigned" in forced.out
    assert "not restored (never durable): live locks, idempotency records" in forced.out
    assert await service.verify() == []


async def test_rebuild_force_replaces_a_corrupted_sequence(service: Service,
                                                           scenario: Scenario) -> None:
    await service.redis.set(service.keys.book_seq, "abc")

    await service.rebuild(force=True)

    assert await service.redis.get(service.keys.book_seq) == "2"
    assert await service.verify() == []


async def test_rebuild_of_an_empty_database(service: Service, cli_run: Cli) -> None:
    result = await cli_run("rebuild")
    assert result.status == 0
    assert "rebuilt 0 book(s), 0 code(s), 0 assigned" in result.out
    # Only this test's prefix: the cluster run shares one cluster between tests.
    prefix = service.settings.key_prefix
    assert [k async for k in service.redis.scan_iter(match=f"{prefix}:*")] == []


async def test_a_book_at_the_edges_of_the_validity_span_verifies_and_rebuilds(
        service: Service) -> None:
    """The earliest and latest instants a book accepts are held exactly by
    both stores: verify finds nothing, and a rebuilt Redis has them back."""
    earliest = datetime(1970, 1, 1, tzinfo=UTC)
    latest = datetime(9998, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)
    book = await service.books.create(CreateBook(name="edges", validFrom=earliest,
                                                 validUntil=latest))
    assert (book.validFrom, book.validUntil) == (earliest, latest)
    await service.drain()
    assert await service.verify() == []
    meta = service.keys.book(await service.number(book.id)).meta
    before = {k: v for k, v in (await service.redis.hgetall(meta)).items()
              if k not in CLOCK_FIELDS}
    await lose_redis(service)

    await service.rebuild()

    after = {k: v for k, v in (await service.redis.hgetall(meta)).items()
             if k not in CLOCK_FIELDS}
    assert after == before
    assert (after["validFrom"], after["validUntil"]) == ("0", "253370764799999")
    rebuilt = await service.fresh().books.get(book.id)
    assert (rebuilt.validFrom, rebuilt.validUntil) == (earliest, latest)
