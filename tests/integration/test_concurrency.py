"""Races against the real server: many requests in flight at once, one winner each."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable

import httpx
import pytest
from redis.asyncio import Redis

from .api_client import Api, http_client
from .names import new_user
from .redis_state import book_keys, events
from .tokens import bearer

pytestmark = pytest.mark.integration

RACERS = 50


async def race(calls: list[Awaitable[httpx.Response]]) -> list[httpx.Response]:
    """Sends every request at once (the client allows 100 connections)."""
    return list(await asyncio.gather(*calls))


def outcomes(responses: list[httpx.Response]) -> Counter[tuple[int, str]]:
    """(status, problem type) of each answer; successes count as (200, "")."""
    counted: Counter[tuple[int, str]] = Counter()
    for response in responses:
        slug = "" if response.is_success else response.json()["type"].rsplit("/", 1)[-1]
        counted[(response.status_code, slug)] += 1
    return counted


async def test_300_users_race_for_100_codes(api: Api, redis: Redis) -> None:
    book, codes = await api.book_with_codes(100)
    users = [new_user() for _ in range(300)]

    responses = await race([api.assign(book["id"], user) for user in users])

    assert outcomes(responses) == {(200, ""): 100, (409, "book-exhausted"): 200}
    won = {r.json()["code"]: r.json()["assignedTo"] for r in responses if r.status_code == 200}
    assert sorted(won) == sorted(codes)
    keys = await book_keys(redis, book["id"])
    assert await redis.scard(f"{keys}:free") == 0
    assert await redis.hlen(f"{keys}:assigned") == 100
    assigned = await events(redis, book["id"], "assigned")
    assert len(assigned) == 100
    assert {e["code"]: e["user"] for e in assigned} == won
    counts = (await api.get(f"/coupons/{book['id']}")).json()["counts"]
    assert (counts["available"], counts["assigned"]) == (0, 100)


async def test_one_user_racing_gets_at_most_max_per_user(api: Api, redis: Redis) -> None:
    book, _ = await api.book_with_codes(60, maxPerUser=3)
    user = new_user()

    responses = await race([api.assign(book["id"], user) for _ in range(RACERS)])

    assert outcomes(responses) == {(200, ""): 3, (409, "user-limit-reached"): RACERS - 3}
    keys = await book_keys(redis, book["id"])
    assert await redis.zcard(f"{keys}:user:{user}") == 3
    assert await redis.scard(f"{keys}:free") == 57
    assert len(await events(redis, book["id"], "assigned")) == 3


async def test_racing_locks_on_one_code_leave_one_holder(api: Api, redis: Redis) -> None:
    book, code, user = await api.owned_code()

    responses = await race([api.lock(code, user, ttl=30) for _ in range(RACERS)])

    assert outcomes(responses) == {(200, ""): 1, (423, "code-locked"): RACERS - 1}
    [winner] = [r.json() for r in responses if r.status_code == 200]
    keys = await book_keys(redis, book["id"])
    assert await redis.get(f"{keys}:lock:{code}") == winner["lockToken"]
    assert all("retry-after" in r.headers for r in responses if r.status_code == 423)
    assert len(await events(redis, book["id"], "locked")) == 1


async def test_racing_redeems_of_a_single_use_code_redeem_once(api: Api, redis: Redis) -> None:
    book, code, user = await api.owned_code()

    responses = await race([api.redeem(code, user) for _ in range(RACERS)])

    assert outcomes(responses) == {(200, ""): 1, (423, "code-redeemed"): RACERS - 1}
    assert len(await events(redis, book["id"], "redeemed")) == 1
    keys = await book_keys(redis, book["id"])
    assert (await redis.hget(f"{keys}:meta", "redeemed")) == "1"


async def test_racing_redeems_stop_at_max_redeems_per_code(api: Api, redis: Redis) -> None:
    book, code, user = await api.owned_code(multipleRedeemsAllowed=True, maxRedeemsPerCode=5)

    responses = await race([api.redeem(code, user) for _ in range(RACERS)])

    assert outcomes(responses) == {(200, ""): 5, (423, "code-redeemed"): RACERS - 5}
    won = sorted(r.json()["timesRedeemed"] for r in responses if r.status_code == 200)
    assert won == [1, 2, 3, 4, 5]
    assert len(await events(redis, book["id"], "redeemed")) == 5
    [listed] = (await api.get(f"/users/{user}/coupons")).json()
    assert (listed["timesRedeemed"], listed["status"]) == (5, "redeemed")


async def test_many_users_racing_for_one_named_code(api: Api, redis: Redis) -> None:
    book, [code] = await api.book_with_codes(1)
    users = [new_user() for _ in range(RACERS)]

    responses = await race([api.assign_code(code, user) for user in users])

    assert outcomes(responses) == {(200, ""): 1, (409, "code-already-assigned"): RACERS - 1}
    [winner] = [r.json()["assignedTo"] for r in responses if r.status_code == 200]
    keys = await book_keys(redis, book["id"])
    assert (await redis.hget(f"{keys}:assigned", code)).startswith(f"{winner}|")
    assigned = await events(redis, book["id"], "assigned")
    assert [(e["code"], e["user"]) for e in assigned] == [(code, winner)]


async def test_an_expired_lock_is_taken_again_by_exactly_one(api: Api, redis: Redis) -> None:
    book, code, user = await api.owned_code()
    assert (await api.lock(code, user, ttl=1)).status_code == 200
    await asyncio.sleep(1.2)

    responses = await race([api.lock(code, user, ttl=30) for _ in range(RACERS)])

    assert outcomes(responses) == {(200, ""): 1, (423, "code-locked"): RACERS - 1}
    assert len(await events(redis, book["id"], "locked")) == 2
    assert len(await events(redis, book["id"], "lock_expired")) == 1


async def test_racing_retries_with_one_idempotency_key_assign_once(
        api: Api, redis: Redis) -> None:
    book, _ = await api.book_with_codes(10)
    user = new_user()
    token = api.server.token("checkout", "coupons:write")
    key = {"Idempotency-Key": f"retry-{uuid.uuid4()}"}

    responses = await race([api.assign(book["id"], user, token=token, headers=key)
                            for _ in range(RACERS)])

    assert outcomes(responses) == {(200, ""): RACERS}
    assert len({r.json()["code"] for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == RACERS - 1
    assert len(await events(redis, book["id"], "assigned")) == 1


async def test_random_and_named_assigns_racing_for_a_books_last_code(
        api: Api, redis: Redis) -> None:
    """SPOP and the named assign's SREM meet on one free set: one winner,
    whichever route it came by, and each loser told why from its side."""
    book, [code] = await api.book_with_codes(1)
    half = RACERS // 2

    responses = await race([api.assign(book["id"], new_user()) for _ in range(half)]
                           + [api.assign_code(code, new_user()) for _ in range(half)])

    [winner] = [r.json() for r in responses if r.status_code == 200]
    random_won = any(r.status_code == 200 for r in responses[:half])
    assert outcomes(responses) == {
        (200, ""): 1,
        (409, "book-exhausted"): half - random_won,
        (409, "code-already-assigned"): half - (not random_won)}
    keys = await book_keys(redis, book["id"])
    assert await redis.scard(f"{keys}:free") == 0
    assert (await redis.hget(f"{keys}:assigned", code)).startswith(f"{winner['assignedTo']}|")
    assert [e["user"] for e in await events(redis, book["id"], "assigned")] == [
        winner["assignedTo"]]


async def test_locks_and_redeems_racing_on_one_code_let_exactly_one_through(
        api: Api, redis: Redis) -> None:
    """A lock shuts out redeems without its token; a redemption shuts out
    locks. Whichever lands first, nothing else succeeds."""
    book, code, user = await api.owned_code()
    half = RACERS // 2

    responses = await race([api.lock(code, user, ttl=30) for _ in range(half)]
                           + [api.redeem(code, user) for _ in range(half)])

    [winner] = [i for i, r in enumerate(responses) if r.status_code == 200]
    keys = await book_keys(redis, book["id"])
    owner, _, times, _, version = (await redis.hget(f"{keys}:assigned", code)).split("|")
    if winner < half:  # a lock won: the code is locked, never redeemed
        assert outcomes(responses) == {(200, ""): 1, (423, "code-locked"): RACERS - 1}
        assert await redis.get(f"{keys}:lock:{code}") == responses[winner].json()["lockToken"]
        assert (times, version) == ("0", "2")
        assert await events(redis, book["id"], "redeemed") == []
    else:  # a redemption won: used up, never locked
        assert outcomes(responses) == {(200, ""): 1, (423, "code-redeemed"): RACERS - 1}
        assert await redis.exists(f"{keys}:lock:{code}") == 0
        assert (times, version) == ("1", "2")
        assert await events(redis, book["id"], "locked") == []
    assert owner == user


@pytest.mark.parametrize("action", ["lock", "redeem"])
async def test_racing_retries_with_one_key_lock_or_redeem_once(
        api: Api, redis: Redis, action: str) -> None:
    book, code, user = await api.owned_code(multipleRedeemsAllowed=True)
    key = {"Idempotency-Key": f"retry-{uuid.uuid4()}"}
    send = (lambda: api.lock(code, user, ttl=30, headers=key)) if action == "lock" \
        else (lambda: api.redeem(code, user, headers=key))

    responses = await race([send() for _ in range(RACERS)])

    assert outcomes(responses) == {(200, ""): RACERS}
    assert len({r.text for r in responses}) == 1  # every retry got the first answer
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == RACERS - 1
    kind = "locked" if action == "lock" else "redeemed"
    assert len(await events(redis, book["id"], kind)) == 1
    keys = await book_keys(redis, book["id"])
    _, _, times, _, _ = (await redis.hget(f"{keys}:assigned", code)).split("|")
    assert times == ("0" if action == "lock" else "1")


async def test_uploads_racing_to_put_the_same_codes_in_different_books(
        api: Api, redis: Redis) -> None:
    """A code is unique across books: each of the shared codes ends up in
    exactly one book, and every other upload reports it as in another book."""
    shared = [f"RACE-{uuid.uuid4().hex[:12].upper()}" for _ in range(100)]
    books = [await api.create_book() for _ in range(10)]

    responses = await race([api.post("/coupons/codes", {"couponBookId": b["id"], "codes": shared},
                                      token=api.server.admin) for b in books])

    assert [r.status_code for r in responses] == [200] * len(books)
    results = [r.json() for r in responses]
    assert sum(r["added"] for r in results) == len(shared)
    assert sum(len(r["refused"]["inOtherBook"]) for r in results) == \
        len(shared) * (len(books) - 1)
    holder: dict[str, str] = {}
    for book in books:
        keys = await book_keys(redis, book["id"])
        for code in await redis.smembers(f"{keys}:free"):
            assert code not in holder, f"{code} is free in two books"
            holder[code] = book["id"]
    assert sorted(holder) == sorted(shared)


BURST = 300  # well past a Redis pool's 100 connections (app.REDIS_MAX_CONNECTIONS)


async def test_a_burst_of_listings_all_answer(api: Api) -> None:
    """Every listing in flight at once gets its codes. A listing's look-up of
    the user's books took a pooled connection each, and a burst like this
    one got 503 "Too many connections"; it is pipelined now."""
    users = [new_user() for _ in range(3)]
    held: dict[str, str] = {}
    book, codes = await api.book_with_codes(len(users))
    for code, user in zip(codes, users, strict=True):
        assert (await api.assign_code(code, user)).status_code == 200
        held[user] = code
    async with http_client(str(api.client.base_url), connections=BURST) as burst:
        asked = [users[i % len(users)] for i in range(BURST)]
        responses = await race([burst.get(f"/users/{user}/coupons",
                                          headers=bearer(api.server.writer))
                                for user in asked])

    assert outcomes(responses) == {(200, ""): BURST}
    for user, response in zip(asked, responses, strict=True):
        assert [(c["code"], c["couponBookId"]) for c in response.json()] \
            == [(held[user], book["id"])]
