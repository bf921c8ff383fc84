"""assign_random and assign_code through Coupons."""

from __future__ import annotations

import asyncio
import gc
import re
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from couponsvc import errors
from couponsvc.auth import Principal
from couponsvc.books import Books
from couponsvc.coupons import Coupons
from couponsvc.schemas import CreateBook
from couponsvc.scripts import Scripts
from couponsvc.settings import Settings
from couponsvc.store import Store

pytestmark = pytest.mark.unit

CODES = ["C1", "C2", "C3"]


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def test_assign_random_hands_out_a_free_code(make_book, coupons, writer, redis, events):
    book = await make_book(CODES)

    outcome = await coupons.assign_random(writer, book.id, "bob", None)

    coupon = outcome.coupon
    assert outcome.replayed is False
    assert coupon.code in CODES
    assert (coupon.couponBookId, coupon.assignedTo, coupon.status) == (book.id, "bob", "assigned")
    assert (coupon.locked, coupon.timesRedeemed, coupon.lockedUntil, coupon.lastRedeemedAt) == (
        False, 0, None, None)
    assert await redis.smembers("cb:{book:1}:free") == set(CODES) - {coupon.code}
    raw = await redis.hget("cb:{book:1}:assigned", coupon.code)
    assert raw == f"bob|{ms(coupon.assignedAt)}|0|0|1"
    assert await redis.zrange("cb:{book:1}:user:bob", 0, -1, withscores=True) == [
        (coupon.code, 0.0)]
    assert await redis.smembers("cb:{user:bob}:books") == {"1"}
    assert await redis.hget("cb:{book:1}:meta", "assigned") == "1"
    [event] = [e for e in await events(book.id) if e["type"] == "assigned"]
    assert event.items() >= {"book": book.id, "code": coupon.code, "user": "bob",
                             "at": str(ms(coupon.assignedAt)), "v": "1"}.items()


async def test_assign_random_until_exhausted(make_book, coupons, writer, redis, events):
    book = await make_book(CODES)

    handed = {(await coupons.assign_random(writer, book.id, f"u{i}", None)).coupon.code
              for i in range(3)}
    with pytest.raises(errors.BookExhausted):
        await coupons.assign_random(writer, book.id, "late", None)

    assert handed == set(CODES)
    assert await redis.scard("cb:{book:1}:free") == 0
    assert await redis.hget("cb:{book:1}:meta", "assigned") == "3"
    assert await redis.exists("cb:{book:1}:user:late") == 0
    assert sum(e["type"] == "assigned" for e in await events(book.id)) == 3


async def test_max_per_user(make_book, coupons, writer, redis):
    book = await make_book(["C1", "C2", "C3", "C4", "C5"], maxPerUser=2)
    await coupons.assign_code(writer, "C5", "bob", None, None)
    await coupons.assign_random(writer, book.id, "bob", None)

    with pytest.raises(errors.UserLimitReached):
        await coupons.assign_random(writer, book.id, "bob", None)
    free = await redis.smembers("cb:{book:1}:free")
    with pytest.raises(errors.UserLimitReached):
        await coupons.assign_code(writer, sorted(free)[0], "bob", None, None)

    assert await redis.zcard("cb:{book:1}:user:bob") == 2
    assert await redis.smembers("cb:{book:1}:free") == free
    # The limit is per user: someone else still gets a code.
    carols = await coupons.assign_random(writer, book.id, "carol", None)
    assert carols.coupon.assignedTo == "carol"


@pytest.mark.parametrize(
    "window",
    [
        {"validFrom": datetime.now(UTC) + timedelta(days=1)},
        {"validFrom": datetime.now(UTC) - timedelta(days=2),
         "validUntil": datetime.now(UTC) - timedelta(days=1)},
        {"validUntil": datetime.now(UTC) - timedelta(seconds=1)},
    ],
)
async def test_assign_outside_validity_window(make_book, coupons, writer, redis, events, window):
    book = await make_book(CODES, **window)

    with pytest.raises(errors.BookNotActive):
        await coupons.assign_random(writer, book.id, "bob", None)
    with pytest.raises(errors.BookNotActive):
        await coupons.assign_code(writer, "C1", "bob", None, None)

    assert await redis.smembers("cb:{book:1}:free") == set(CODES)
    assert await redis.hlen("cb:{book:1}:assigned") == 0
    assert "assigned" not in {e["type"] for e in await events(book.id)}


async def test_assign_inside_validity_window(make_book, coupons, writer):
    now = datetime.now(UTC)
    book = await make_book(CODES, validFrom=now - timedelta(minutes=1),
                           validUntil=now + timedelta(minutes=1))

    assert (await coupons.assign_random(writer, book.id, "bob", None)).coupon.code in CODES


async def test_assign_random_for_unknown_book(coupons, writer):
    with pytest.raises(errors.BookNotFound):
        await coupons.assign_random(writer, "00000000-0000-0000-0000-000000000000", "bob", None)


async def test_end_user_assigns_only_for_itself(make_book, coupons, alice, redis):
    book = await make_book(CODES)

    with pytest.raises(errors.Forbidden):
        await coupons.assign_random(alice, book.id, "bob", None)
    with pytest.raises(errors.Forbidden):
        await coupons.assign_code(alice, "C1", "bob", None, None)
    assert await redis.scard("cb:{book:1}:free") == 3

    assert (await coupons.assign_random(alice, book.id, "alice", None)).coupon.assignedTo == "alice"


# --- assign_code -------------------------------------------------------------


async def test_assign_code_assigns_the_named_code(make_book, coupons, writer, redis, events):
    book = await make_book(CODES)

    outcome = await coupons.assign_code(writer, "C2", "bob", book.id, None)

    coupon = outcome.coupon
    assert (coupon.code, coupon.assignedTo, outcome.replayed) == ("C2", "bob", False)
    assert await redis.smembers("cb:{book:1}:free") == {"C1", "C3"}
    assert re.fullmatch(r"bob\|\d{13}\|0\|0\|1", await redis.hget("cb:{book:1}:assigned", "C2"))
    assert await redis.zrange("cb:{book:1}:user:bob", 0, -1) == ["C2"]
    assert [(e["type"], e["code"], e["v"]) for e in await events(book.id)][-1] == (
        "assigned", "C2", "1")


async def test_assign_code_again_to_the_same_user_changes_nothing(make_book, coupons, writer,
                                                                 redis, events):
    book = await make_book(CODES)
    first = await coupons.assign_code(writer, "C2", "bob", None, None)
    before = await events(book.id)

    again = await coupons.assign_code(writer, "C2", "bob", None, None)

    assert again.coupon == first.coupon
    assert await events(book.id) == before
    assert await redis.hget("cb:{book:1}:meta", "assigned") == "1"


async def test_assign_code_of_another_user(make_book, coupons, writer, redis):
    await make_book(CODES)
    await coupons.assign_code(writer, "C2", "alice-friend", None, None)
    end_user = Principal("mallory", frozenset())

    with pytest.raises(errors.CodeAlreadyAssigned):
        await coupons.assign_code(writer, "C2", "bob", None, None)
    # An end user cannot tell someone else's code from a code that does not exist.
    with pytest.raises(errors.CodeNotFound):
        await coupons.assign_code(end_user, "C2", "mallory", None, None)

    assert (await redis.hget("cb:{book:1}:assigned", "C2")).startswith("alice-friend|")


async def test_assign_unknown_code(make_book, coupons, writer, alice):
    await make_book(CODES)

    for principal, user in ((writer, "bob"), (alice, "alice")):
        with pytest.raises(errors.CodeNotFound):
            await coupons.assign_code(principal, "NOPE", user, None, None)


async def test_assign_code_with_the_wrong_book(make_book, coupons, writer, alice, redis):
    await make_book(CODES)
    other = await make_book(["D1"])

    with pytest.raises(errors.BookMismatch):
        await coupons.assign_code(writer, "C1", "bob", other.id, None)
    with pytest.raises(errors.CodeNotFound):
        await coupons.assign_code(alice, "C1", "alice", other.id, None)

    assert await redis.smembers("cb:{book:1}:free") == set(CODES)
    assert await redis.hlen("cb:{book:2}:assigned") == 0


async def test_end_user_cannot_probe_codes_of_an_inactive_book(make_book, coupons, writer,
                                                               alice, redis):
    await make_book(CODES)
    await coupons.assign_code(writer, "C1", "bob", None, None)
    await redis.hset("cb:{book:1}:meta", "validUntil", ms(datetime.now(UTC)) - 1000)

    # Regression: the window was checked before ownership, so bob's code answered
    # BookNotActive. It must look exactly like a code that does not exist.
    with pytest.raises(errors.CodeNotFound):
        await coupons.assign_code(alice, "NOPE", "alice", None, None)
    with pytest.raises(errors.CodeNotFound):
        await coupons.assign_code(alice, "C1", "alice", None, None)


async def test_assigning_ones_own_code_again_after_the_window_answers_it(
        make_book, coupons, writer, redis, events):
    """It changes nothing, so the window does not matter to it (the docs promise
    the existing assignment); a new assignment is still refused."""
    book = await make_book(CODES)
    first = await coupons.assign_code(writer, "C1", "bob", None, None)
    await redis.hset("cb:{book:1}:meta", "validUntil", ms(datetime.now(UTC)) - 1000)
    before = len(await events(book.id))

    again = await coupons.assign_code(writer, "C1", "bob", None, None)

    assert again.coupon == first.coupon
    assert len(await events(book.id)) == before
    with pytest.raises(errors.BookNotActive):
        await coupons.assign_code(writer, "C2", "bob", None, None)


async def test_assignments_gathered_at_once_each_get_their_own_outcome(
        make_book, coupons, writer, redis):
    """More calls than codes, over more than one batch of the pipelining client:
    each caller gets its own reply (a code no one else got, or BookExhausted).
    fakeredis runs scripts one at a time, so this shows no race:
    tests/integration/test_concurrency.py races assignments on a real server."""
    book = await make_book([f"K{i}" for i in range(250)])

    results = await asyncio.gather(
        *(coupons.assign_random(writer, book.id, f"user{i}", None) for i in range(300)),
        return_exceptions=True)

    handed = [r.coupon.code for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(handed) == len(set(handed)) == 250
    assert len(refused) == 50 and all(isinstance(r, errors.BookExhausted) for r in refused)
    assert await redis.hget("cb:{book:1}:meta", "assigned") == "250"
    assert await redis.hlen("cb:{book:1}:assigned") == 250


async def test_redis_outage_during_assignment_logs_nothing_extra(writer, caplog):
    server = fakeredis.FakeServer()
    client = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    scripts = Scripts(client)
    await scripts.load()
    store = Store(client, scripts, Settings(env="dev"))
    book = await Books(store).create(CreateBook(name="b", initialCouponAmount=2))
    await Coupons(store).assign_random(writer, book.id, "bob", None)  # book id now cached
    server.connected = False

    try:
        await Coupons(store).assign_random(writer, book.id, "bob", None)
    except RedisConnectionError:
        pass
    else:
        pytest.fail("the outage went unnoticed")
    for _ in range(3):
        await asyncio.sleep(0.01)
        gc.collect()

    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
    await client.aclose()
