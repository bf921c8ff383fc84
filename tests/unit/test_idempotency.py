"""Idempotency keys on assign_random, assign_code and redeem."""

from __future__ import annotations

import re

import pytest

from couponsvc import errors
from couponsvc.coupons import Idempotency

pytestmark = pytest.mark.unit

CODES = ["C1", "C2", "C3", "C4"]


async def test_assign_random_retry_replays_the_first_answer(make_book, coupons, writer, redis,
                                                            events, settings):
    book = await make_book(CODES)
    idem = Idempotency("checkout", "key-1", "fingerprint-a")

    first = await coupons.assign_random(writer, book.id, "bob", idem)
    again = await coupons.assign_random(writer, book.id, "bob", idem)

    assert (first.replayed, again.replayed) == (False, True)
    assert again.coupon == first.coupon
    assert await redis.scard("cb:{book:1}:free") == 3
    assert await redis.zrange("cb:{book:1}:user:bob", 0, -1) == [first.coupon.code]
    assert await redis.hget("cb:{book:1}:meta", "assigned") == "1"
    assert sum(e["type"] == "assigned" for e in await events(book.id)) == 1
    [record] = await redis.keys("cb:{book:1}:idem:*")
    assert re.fullmatch(r"cb:\{book:1\}:idem:[0-9a-f]{32}", record)
    assert 0 < await redis.pttl(record) <= settings.idempotency_ttl_seconds * 1000


async def test_same_key_with_another_request_is_refused(make_book, coupons, writer, redis):
    book = await make_book(CODES)
    await coupons.assign_random(writer, book.id, "bob", Idempotency("checkout", "k", "fp-a"))

    with pytest.raises(errors.IdempotencyKeyReused):
        await coupons.assign_random(writer, book.id, "bob", Idempotency("checkout", "k", "fp-b"))

    assert await redis.scard("cb:{book:1}:free") == 3


async def test_keys_are_per_caller_and_per_key(make_book, coupons, writer, redis):
    book = await make_book(CODES)

    handed = {
        (await coupons.assign_random(writer, book.id, "bob", Idempotency(caller, key, "fp")))
        .coupon.code
        for caller, key in (("checkout", "k1"), ("checkout", "k2"), ("other", "k1"))
    }

    assert len(handed) == 3
    assert await redis.scard("cb:{book:1}:free") == 1


async def test_failed_request_is_not_remembered(make_book, books, coupons, writer):
    book = await make_book(["FIRST"])
    await coupons.assign_random(writer, book.id, "carol", None)
    idem = Idempotency("checkout", "k", "fp")
    with pytest.raises(errors.BookExhausted):
        await coupons.assign_random(writer, book.id, "bob", idem)
    await books.upload(book.id, ["SECOND"])

    outcome = await coupons.assign_random(writer, book.id, "bob", idem)

    assert (outcome.coupon.code, outcome.replayed) == ("SECOND", False)


async def test_assign_code_retry_replays(make_book, coupons, writer, redis, events):
    book = await make_book(CODES)
    idem = Idempotency("checkout", "k", "fp")

    first = await coupons.assign_code(writer, "C3", "bob", book.id, idem)
    again = await coupons.assign_code(writer, "C3", "bob", book.id, idem)

    assert (again.coupon, again.replayed) == (first.coupon, True)
    assert sum(e["type"] == "assigned" for e in await events(book.id)) == 1
    with pytest.raises(errors.IdempotencyKeyReused):
        await coupons.assign_code(writer, "C4", "bob", book.id, Idempotency("checkout", "k", "x"))
    assert await redis.sismember("cb:{book:1}:free", "C4")


async def test_assign_code_retry_replays_the_answer_to_its_owner(make_book, coupons, writer,
                                                                   events):
    # The code was already bob's when the keyed request came: that answer is a
    # success too, so a retry replays it, even after the code has changed.
    book = await make_book(CODES)
    await coupons.assign_code(writer, "C2", "bob", None, None)
    idem = Idempotency("checkout", "k", "fp")

    first = await coupons.assign_code(writer, "C2", "bob", None, idem)
    await coupons.lock(writer, "C2", "bob", None)
    again = await coupons.assign_code(writer, "C2", "bob", None, idem)

    assert (first.replayed, again.replayed) == (False, True)
    assert again.coupon == first.coupon and not first.coupon.locked
    assert sum(e["type"] == "assigned" for e in await events(book.id)) == 1


async def test_redeem_retry_replays_and_does_not_redeem_twice(make_book, coupons, writer, redis,
                                                               events):
    # Unlimited redemptions: a retry that was not recognised would redeem again.
    book = await make_book(["R1"], multipleRedeemsAllowed=True)
    await coupons.assign_code(writer, "R1", "bob", None, None)
    idem = Idempotency("checkout", "pay-42", "fp-redeem")

    first, first_replayed = await coupons.redeem(writer, "R1", "bob", None, idem)
    again, again_replayed = await coupons.redeem(writer, "R1", "bob", None, idem)

    assert (first_replayed, again_replayed) == (False, True)
    assert again == first
    assert first.timesRedeemed == 1 and first.redemptionsLeft is None
    assert await redis.hget("cb:{book:1}:meta", "redeemed") == "1"
    assert (await redis.hget("cb:{book:1}:assigned", "R1")).split("|")[2] == "1"
    assert sum(e["type"] == "redeemed" for e in await events(book.id)) == 1

    with pytest.raises(errors.IdempotencyKeyReused):
        await coupons.redeem(writer, "R1", "bob", None, Idempotency("checkout", "pay-42", "fp-2"))
    assert await redis.hget("cb:{book:1}:meta", "redeemed") == "1"


async def test_redeem_replay_of_a_limited_code(make_book, coupons, writer):
    await make_book(["L1"], multipleRedeemsAllowed=True, maxRedeemsPerCode=2)
    await coupons.assign_code(writer, "L1", "bob", None, None)
    idem = Idempotency("checkout", "k", "fp")

    first, _ = await coupons.redeem(writer, "L1", "bob", None, idem)
    again, replayed = await coupons.redeem(writer, "L1", "bob", None, idem)

    assert replayed and again == first and first.redemptionsLeft == 1
