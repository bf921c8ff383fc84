"""Locking, unlocking and redeeming codes during a checkout."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from .api_client import Api
from .names import new_code, new_user
from .problems import assert_problem
from .redis_state import book_keys, events
from .tokens import WRITE, bearer

pytestmark = pytest.mark.integration

PATH_ACTIONS = ["lock", "unlock", "redeem"]


def _body(action: str, user: str) -> dict[str, str]:
    return {"userId": user, "lockToken": "t"} if action == "unlock" else {"userId": user}


async def test_lock_gives_a_token_and_an_expiry(api: Api, redis: Redis) -> None:
    book, code, user = await api.owned_code()

    response = await api.lock(code, user, ttl=60)

    assert response.status_code == 200, response.text
    lock = response.json()
    assert (lock["code"], lock["couponBookId"], lock["assignedTo"]) == (code, book["id"], user)
    assert len(lock["lockToken"]) >= 16
    expires = datetime.fromisoformat(lock["lockedUntil"])
    assert timedelta(seconds=55) < expires - datetime.now(UTC) <= timedelta(seconds=61)

    keys = await book_keys(redis, book["id"])
    assert await redis.get(f"{keys}:lock:{code}") == lock["lockToken"]
    assert 55_000 < await redis.pttl(f"{keys}:lock:{code}") <= 60_000
    assert await redis.zscore(f"{keys}:locks", code) == pytest.approx(
        expires.timestamp() * 1000, abs=1)
    [listed] = (await api.get(f"/users/{user}/coupons")).json()
    assert listed["status"] == "locked" and listed["locked"] is True
    assert listed["lockedUntil"] == lock["lockedUntil"]
    assert (await api.get(f"/coupons/{book['id']}")).json()["counts"]["locked"] == 1
    assert [e["type"] for e in await events(redis, book["id"])][-1] == "locked"


async def test_lock_uses_the_book_ttl_by_default(api: Api, redis: Redis) -> None:
    book, code, user = await api.owned_code(lockTtlSeconds=7)

    assert (await api.lock(code, user)).status_code == 200

    pttl = await redis.pttl(f"{await book_keys(redis, book['id'])}:lock:{code}")
    assert 5_000 < pttl <= 7_000


async def test_a_second_lock_is_423_with_retry_after(api: Api) -> None:
    """Retry-After is the time the lock has left, rounded up: a client that
    waits that long finds the code free, one that waits less is refused again."""
    _, code, user = await api.owned_code()
    first = (await api.lock(code, user, ttl=30)).json()
    locked_until = datetime.fromisoformat(first["lockedUntil"]).timestamp()

    sent = math.floor(time.time() * 1000) / 1000  # the server counts in milliseconds
    second = await api.lock(code, user, ttl=30)
    answered = time.time()

    problem = assert_problem(second, 423, "code-locked")
    retry_after = int(second.headers["retry-after"])
    # The server took "now" somewhere between sending and answering.
    assert math.ceil(locked_until - answered) <= retry_after <= math.ceil(locked_until - sent)
    assert problem["retryAfterSeconds"] == retry_after
    assert datetime.fromisoformat(problem["lockedUntil"]) == datetime.fromisoformat(
        first["lockedUntil"])


async def test_only_the_owner_may_lock(api: Api, redis: Redis) -> None:
    book, code, _ = await api.owned_code()

    response = await api.lock(code, new_user())

    assert_problem(response, 409, "code-not-assigned")
    assert not await redis.exists(f"{await book_keys(redis, book['id'])}:lock:{code}")


async def test_a_free_code_cannot_be_locked(api: Api) -> None:
    _, [code] = await api.book_with_codes(1)

    assert_problem(await api.lock(code, new_user()), 409, "code-not-assigned")


async def test_unlock_needs_the_lock_token(api: Api, redis: Redis) -> None:
    book, code, user = await api.owned_code()
    lock = (await api.lock(code, user)).json()
    lock_key = f"{await book_keys(redis, book['id'])}:lock:{code}"

    wrong = await api.unlock(code, user, "not-the-token")
    assert_problem(wrong, 423, "code-locked")
    assert await redis.get(lock_key) == lock["lockToken"]

    right = await api.unlock(code, user, lock["lockToken"])

    assert right.status_code == 200, right.text
    coupon = right.json()
    assert (coupon["status"], coupon["locked"]) == ("assigned", False)
    assert "lockedUntil" not in coupon
    assert not await redis.exists(lock_key)
    assert_problem(await api.unlock(code, user, lock["lockToken"]), 409, "not-locked")
    assert (await api.lock(code, user)).status_code == 200


async def test_redeem_while_locked_needs_the_lock_token(api: Api, redis: Redis) -> None:
    book, code, user = await api.owned_code()
    lock = (await api.lock(code, user)).json()

    without = await api.redeem(code, user)
    wrong = await api.redeem(code, user, "not-the-token")
    right = await api.redeem(code, user, lock["lockToken"])

    assert_problem(without, 423, "code-locked")
    assert "retry-after" in without.headers
    assert_problem(wrong, 423, "code-locked")
    assert right.status_code == 200, right.text
    keys = await book_keys(redis, book["id"])
    assert not await redis.exists(f"{keys}:lock:{code}")
    assert await redis.zscore(f"{keys}:locks", code) is None
    assert len(await events(redis, book["id"], "redeemed")) == 1


async def test_a_single_use_code_redeems_once(api: Api, redis: Redis) -> None:
    book, code, user = await api.owned_code()

    first = await api.redeem(code, user)
    second = await api.redeem(code, user)
    lock = await api.lock(code, user)

    assert first.status_code == 200, first.text
    redemption = first.json()
    assert (redemption["code"], redemption["couponBookId"], redemption["assignedTo"]) == (
        code, book["id"], user)
    assert redemption["timesRedeemed"] == 1
    assert redemption["redemptionsLeft"] == 0
    assert abs(datetime.fromisoformat(redemption["redeemedAt"]) - datetime.now(UTC)) < timedelta(
        minutes=1)
    assert_problem(second, 423, "code-redeemed")
    assert_problem(lock, 423, "code-redeemed")
    [listed] = (await api.get(f"/users/{user}/coupons")).json()
    assert (listed["status"], listed["timesRedeemed"]) == ("redeemed", 1)
    assert listed["lastRedeemedAt"] == redemption["redeemedAt"]
    assert (await api.get(f"/coupons/{book['id']}")).json()["counts"]["redeemed"] == 1
    assert len(await events(redis, book["id"], "redeemed")) == 1


async def test_multiple_redeems_up_to_the_limit(api: Api) -> None:
    _, code, user = await api.owned_code(multipleRedeemsAllowed=True, maxRedeemsPerCode=3)

    answers = [await api.redeem(code, user) for _ in range(4)]

    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    assert [a.json()["timesRedeemed"] for a in answers[:3]] == [1, 2, 3]
    assert [a.json()["redemptionsLeft"] for a in answers[:3]] == [2, 1, 0]
    problem = assert_problem(answers[3], 423, "code-redeemed")
    assert "3" in problem["detail"]


async def test_multiple_redeems_without_a_limit(api: Api) -> None:
    _, code, user = await api.owned_code(multipleRedeemsAllowed=True)

    answers = [await api.redeem(code, user) for _ in range(5)]

    assert {a.status_code for a in answers} == {200}
    assert answers[-1].json()["timesRedeemed"] == 5
    assert answers[-1].json()["redemptionsLeft"] is None
    [listed] = (await api.get(f"/users/{user}/coupons")).json()
    assert listed["status"] == "assigned"


async def test_only_the_owner_may_redeem(api: Api) -> None:
    _, code, _ = await api.owned_code()

    assert_problem(await api.redeem(code, new_user()), 409, "code-not-assigned")


async def test_redeem_replays_with_an_idempotency_key(api: Api, redis: Redis) -> None:
    book, code, user = await api.owned_code(multipleRedeemsAllowed=True)
    key = {"Idempotency-Key": f"pay-{uuid.uuid4()}"}
    token = api.server.token("payments", "coupons:write")

    first = await api.redeem(code, user, token=token, headers=key)
    second = await api.redeem(code, user, token=token, headers=key)

    assert first.status_code == second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert len(await events(redis, book["id"], "redeemed")) == 1
    [listed] = (await api.get(f"/users/{user}/coupons")).json()
    assert listed["timesRedeemed"] == 1


async def test_a_lock_whose_answer_was_lost_is_recovered_with_its_key(
        api: Api, redis: Redis) -> None:
    """Without a key the retry would be 423 (the code is locked, by this very
    checkout) until the lock expires; with one it gets the first answer, and
    its token redeems."""
    book, code, user = await api.owned_code()
    key = {"Idempotency-Key": f"checkout-{uuid.uuid4()}"}
    token = api.server.token("checkout", "coupons:write")

    first = await api.lock(code, user, 60, token=token, headers=key)
    retry = await api.lock(code, user, 60, token=token, headers=key)
    other = await api.lock(code, user, 30, token=token, headers=key)

    assert first.status_code == retry.status_code == 200, (first.text, retry.text)
    assert "idempotent-replayed" not in first.headers
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == first.json()
    assert_problem(other, 409, "idempotency-key-reused")
    assert len(await events(redis, book["id"], "locked")) == 1
    redeemed = await api.redeem(code, user, retry.json()["lockToken"], token=token)
    assert redeemed.status_code == 200, redeemed.text


async def _code_state(redis: Redis, prefix: str, code: str) -> tuple[Any, ...]:
    """What a lock or redeem of `code` would change in its book."""
    return (await redis.hget(f"{prefix}:assigned", code),
            await redis.get(f"{prefix}:lock:{code}"),
            await redis.zscore(f"{prefix}:locks", code),
            await redis.xlen(f"{prefix}:events"))


@pytest.mark.parametrize("then", ["lock", "redeem"])
async def test_a_key_used_for_one_code_is_409_for_another(
        api: Api, redis: Redis, then: str) -> None:
    """A key belongs to one request, its path included: the same bytes sent
    for another code of the same user (a client reusing an order's key for
    its next code) are another request. Neither a replay of the first
    answer nor a second lock or redeem under that key."""
    book, codes = await api.book_with_codes(2)
    user = new_user()
    for code in codes:
        assert (await api.assign_code(code, user)).status_code == 200
    first_code, other_code = codes
    headers = {**bearer(api.server.token("checkout", WRITE)), "Content-Type": "application/json",
               "Idempotency-Key": f"order-{uuid.uuid4()}"}
    body = json.dumps({"userId": user}).encode()
    locked = await api.client.post(f"/coupons/lock/{first_code}", content=body, headers=headers)
    assert locked.status_code == 200, locked.text
    prefix = await book_keys(redis, book["id"])
    before = await _code_state(redis, prefix, other_code)

    other = await api.client.post(f"/coupons/{then}/{other_code}", content=body,
                                  headers=headers)

    assert_problem(other, 409, "idempotency-key-reused")
    assert await _code_state(redis, prefix, other_code) == before
    listed = {c["code"]: c for c in (await api.get(f"/users/{user}/coupons")).json()}
    assert (listed[other_code]["status"], listed[other_code]["timesRedeemed"]) == ("assigned", 0)
    assert listed[first_code]["lockedUntil"] == locked.json()["lockedUntil"]


@pytest.mark.parametrize("action", PATH_ACTIONS)
async def test_bad_code_in_path_is_400(api: Api, action: str) -> None:
    response = await api.post(f"/coupons/{action}/bad!code", _body(action, new_user()))

    problem = assert_problem(response, 400, "invalid-request")
    assert problem.get("field") == "code"


@pytest.mark.parametrize("action", PATH_ACTIONS)
async def test_unknown_code_is_404(api: Api, action: str) -> None:
    response = await api.post(f"/coupons/{action}/{new_code()}", _body(action, new_user()))

    assert_problem(response, 404, "code-not-found")


@pytest.mark.parametrize("ttl", [0, 86_401, "60", 60.5, 86_401.0])
async def test_bad_lock_ttl_is_400(api: Api, ttl: object) -> None:
    _, code, user = await api.owned_code()

    response = await api.post(f"/coupons/lock/{code}", {"userId": user, "ttlSeconds": ttl})

    problem = assert_problem(response, 400, "invalid-request")
    assert problem.get("field") == "ttlSeconds"


async def test_a_whole_float_is_an_integer(api: Api, redis: Redis) -> None:
    # JSON Schema (and so the OpenAPI document) counts 60.0 as the integer 60;
    # schema fuzzing found it refused.
    book, code, user = await api.owned_code()

    response = await api.post(f"/coupons/lock/{code}", {"userId": user, "ttlSeconds": 60.0})

    assert response.status_code == 200, response.text
    assert 55_000 < await redis.pttl(f"{await book_keys(redis, book['id'])}:lock:{code}") <= 60_000


async def test_an_expired_lock_can_be_taken_again(api: Api, redis: Redis) -> None:
    book, code, user = await api.owned_code()
    first = (await api.lock(code, user, ttl=1)).json()
    assert_problem(await api.lock(code, user, ttl=1), 423, "code-locked")

    await asyncio.sleep(1.2)
    [listed] = (await api.get(f"/users/{user}/coupons")).json()
    counts = (await api.get(f"/coupons/{book['id']}")).json()["counts"]
    again = await api.lock(code, user, ttl=60)

    assert (listed["status"], listed["locked"]) == ("assigned", False)
    assert counts["locked"] == 0
    assert again.status_code == 200, again.text
    assert again.json()["lockToken"] != first["lockToken"]
    assert_problem(await api.unlock(code, user, first["lockToken"]), 423, "code-locked")
    assert [e["type"] for e in await events(redis, book["id"])][-3:] == [
        "locked", "lock_expired", "locked"]


async def test_an_expired_lock_no_longer_guards_redeem(api: Api) -> None:
    _, code, user = await api.owned_code()
    assert (await api.lock(code, user, ttl=1)).status_code == 200

    await asyncio.sleep(1.2)

    assert (await api.redeem(code, user)).status_code == 200


async def test_nothing_happens_once_the_book_has_expired(api: Api, redis: Redis) -> None:
    until = datetime.now(UTC) + timedelta(seconds=1.5)
    book, code, user = await api.owned_code(validUntil=until.isoformat())

    await asyncio.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.2)

    assert_problem(await api.lock(code, user), 409, "book-not-active")
    assert_problem(await api.redeem(code, user), 409, "book-not-active")
    assert await events(redis, book["id"], "redeemed") == []


async def test_a_lock_ends_when_its_book_does(api: Api, redis: Redis) -> None:
    """Past validUntil the lock's token could redeem nothing, so the lock
    (its key's expiry and the lockedUntil it reports) stops there."""
    until = (datetime.now(UTC) + timedelta(seconds=30)).replace(microsecond=0)
    book, code, user = await api.owned_code(validUntil=until.isoformat())

    response = await api.lock(code, user, 600)

    assert response.status_code == 200, response.text
    assert datetime.fromisoformat(response.json()["lockedUntil"]) == until
    prefix = await book_keys(redis, book["id"])
    assert 0 < await redis.pttl(f"{prefix}:lock:{code}") <= 30_000
    [locked] = await events(redis, book["id"], "locked")
    assert int(locked["until"]) == int(until.timestamp() * 1000)


async def test_a_checkout_may_name_the_codes_book(api: Api, redis: Redis) -> None:
    """The assign's answer carries couponBookId; sent back with the lock and
    the redeem it spares the service a look-up, and changes no outcome. A
    book that does not hold the code is 409 book-mismatch, and changes nothing."""
    book, code, user = await api.owned_code()
    other, _ = await api.book_with_codes(1)
    keys = await book_keys(redis, book["id"])

    mismatch = await api.post(f"/coupons/lock/{code}",
                              {"userId": user, "couponBookId": other["id"]})
    assert_problem(mismatch, 409, "book-mismatch")
    assert await redis.exists(f"{keys}:lock:{code}") == 0
    malformed = await api.post(f"/coupons/lock/{code}", {"userId": user, "couponBookId": "b1"})
    assert_problem(malformed, 400, "invalid-request")

    locked = await api.post(f"/coupons/lock/{code}",
                            {"userId": user, "couponBookId": book["id"].upper()})
    assert locked.status_code == 200, locked.text
    assert await redis.get(f"{keys}:lock:{code}") == locked.json()["lockToken"]
    redeemed = await api.post(f"/coupons/redeem/{code}",
                              {"userId": user, "couponBookId": book["id"],
                               "lockToken": locked.json()["lockToken"]})
    assert redeemed.status_code == 200, redeemed.text
    assert redeemed.json()["timesRedeemed"] == 1
    assert [e["type"] for e in await events(redis, book["id"])][-2:] == ["locked", "redeemed"]


async def test_naming_the_book_or_not_is_one_request_to_its_idempotency_key(
        api: Api, redis: Redis) -> None:
    """The book, named, only spares a look-up: a checkout that retries with
    it (or without it, or after naming a wrong one) gets its lock back."""
    book, code, user = await api.owned_code()
    other, _ = await api.book_with_codes(1)
    key = {"Idempotency-Key": f"pay-{uuid.uuid4()}"}

    wrong = await api.post(f"/coupons/lock/{code}", {"userId": user, "couponBookId": other["id"]},
                           headers=key)
    assert_problem(wrong, 409, "book-mismatch")
    first = await api.post(f"/coupons/lock/{code}", {"userId": user}, headers=key)
    assert first.status_code == 200, first.text
    again = await api.post(f"/coupons/lock/{code}", {"userId": user, "couponBookId": book["id"]},
                           headers=key)
    assert again.status_code == 200, again.text
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["lockToken"] == first.json()["lockToken"]
    keys = await book_keys(redis, book["id"])
    assert await redis.get(f"{keys}:lock:{code}") == first.json()["lockToken"]
