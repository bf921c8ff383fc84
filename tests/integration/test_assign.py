"""POST /coupons/assign and /coupons/assign/{code}: handing codes out, and its rules."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from couponsvc.keys import Keys

from .api_client import Api
from .names import new_code, new_user
from .problems import assert_problem
from .redis_state import book_keys, events
from .tokens import bearer

pytestmark = pytest.mark.integration


def _in(hours: float) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).isoformat()


async def test_assign_hands_out_a_free_code(api: Api, redis: Redis) -> None:
    book, codes = await api.book_with_codes(3)
    user = new_user()

    response = await api.assign(book["id"], user)

    assert response.status_code == 200, response.text
    assert "idempotent-replayed" not in response.headers
    coupon = response.json()
    assert coupon["code"] in codes
    assert coupon["couponBookId"] == book["id"]
    assert coupon["assignedTo"] == user
    assert coupon["status"] == "assigned"
    assert coupon["locked"] is False
    assert coupon["timesRedeemed"] == 0
    assert abs(datetime.fromisoformat(coupon["assignedAt"]) - datetime.now(UTC)) < timedelta(
        minutes=1)
    assert "lockedUntil" not in coupon and "lastRedeemedAt" not in coupon

    keys = await book_keys(redis, book["id"])
    assert not await redis.sismember(f"{keys}:free", coupon["code"])
    assert (await redis.hget(f"{keys}:assigned", coupon["code"])).startswith(f"{user}|")
    assert await redis.zrange(f"{keys}:user:{user}", 0, -1) == [coupon["code"]]
    assigned = await events(redis, book["id"], "assigned")
    assert [(e["code"], e["user"]) for e in assigned] == [(coupon["code"], user)]
    counts = (await api.get(f"/coupons/{book['id']}")).json()["counts"]
    assert (counts["available"], counts["assigned"]) == (2, 1)


async def test_a_user_gets_at_most_max_per_user_codes(api: Api, redis: Redis) -> None:
    book, _ = await api.book_with_codes(5, maxPerUser=2)
    user = new_user()
    first = [(await api.assign(book["id"], user)).status_code for _ in range(2)]

    third = await api.assign(book["id"], user)

    assert first == [200, 200]
    problem = assert_problem(third, 409, "user-limit-reached")
    assert "2" in problem["detail"]
    keys = await book_keys(redis, book["id"])
    assert await redis.zcard(f"{keys}:user:{user}") == 2
    assert await redis.scard(f"{keys}:free") == 3
    assert (await api.assign(book["id"], new_user())).status_code == 200


async def test_max_per_user_also_limits_named_codes(api: Api) -> None:
    book, codes = await api.book_with_codes(2, maxPerUser=1)
    user = new_user()
    assert (await api.assign_code(codes[0], user)).status_code == 200

    response = await api.assign_code(codes[1], user)

    assert_problem(response, 409, "user-limit-reached")


async def test_an_exhausted_book_is_409(api: Api, redis: Redis) -> None:
    book, _ = await api.book_with_codes(2)
    assert (await api.assign(book["id"], new_user())).status_code == 200
    assert (await api.assign(book["id"], new_user())).status_code == 200

    response = await api.assign(book["id"], new_user())

    assert_problem(response, 409, "book-exhausted")
    assert len(await events(redis, book["id"], "assigned")) == 2


async def test_a_book_without_codes_is_exhausted(api: Api) -> None:
    book = await api.create_book()

    assert_problem(await api.assign(book["id"], new_user()), 409, "book-exhausted")


@pytest.mark.parametrize(("valid_from", "valid_until"),
                         [(1, None), (None, -1), (-2, -1)],
                         ids=["not-yet", "over", "window-in-the-past"])
async def test_outside_the_validity_window_is_409(
        api: Api, redis: Redis, valid_from: float | None, valid_until: float | None) -> None:
    window = {name: _in(hours) for name, hours in
              (("validFrom", valid_from), ("validUntil", valid_until)) if hours is not None}
    book, [code] = await api.book_with_codes(1, **window)

    random = await api.assign(book["id"], new_user())
    named = await api.assign_code(code, new_user())

    assert_problem(random, 409, "book-not-active")
    assert_problem(named, 409, "book-not-active")
    assert await redis.scard(f"{await book_keys(redis, book['id'])}:free") == 1


async def test_inside_the_validity_window_assigns(api: Api) -> None:
    book, _ = await api.book_with_codes(1, validFrom=_in(-1), validUntil=_in(1))

    assert (await api.assign(book["id"], new_user())).status_code == 200


async def test_unknown_book_is_404(api: Api) -> None:
    response = await api.assign(str(uuid.uuid4()), new_user())

    assert_problem(response, 404, "book-not-found")


@pytest.mark.parametrize("body", [{"userId": "u"}, {"couponBookId": "x", "userId": "u"},
                                  {"couponBookId": str(uuid.UUID(int=1)), "userId": "a b"},
                                  {"couponBookId": str(uuid.UUID(int=1)), "userId": ""},
                                  {"couponBookId": str(uuid.UUID(int=1)), "userId": "alice\n"},
                                  {"couponBookId": f"{uuid.UUID(int=1)}\n", "userId": "u"}],
                         ids=["no-book", "bad-book-id", "user-with-space", "empty-user",
                              "user-ending-in-line-break", "book-ending-in-line-break"])
async def test_invalid_assign_body_is_400(api: Api, body: dict[str, str]) -> None:
    assert_problem(await api.post("/coupons/assign", body), 400, "invalid-request")


async def test_assign_a_named_code(api: Api, redis: Redis) -> None:
    book, [code, other] = await api.book_with_codes(2)
    user = new_user()

    response = await api.post(f"/coupons/assign/{code}",
                              {"userId": user, "couponBookId": book["id"]})

    assert response.status_code == 200, response.text
    coupon = response.json()
    assert (coupon["code"], coupon["couponBookId"], coupon["assignedTo"]) == (
        code, book["id"], user)
    assert coupon["status"] == "assigned"
    keys = await book_keys(redis, book["id"])
    assert await redis.smembers(f"{keys}:free") == {other}


async def test_assigning_a_code_again_to_its_owner_changes_nothing(
        api: Api, redis: Redis) -> None:
    book, code, user = await api.owned_code()
    first = (await api.get(f"/users/{user}/coupons")).json()

    again = await api.assign_code(code, user)

    assert again.status_code == 200
    assert [again.json()] == first
    assert len(await events(redis, book["id"], "assigned")) == 1


async def test_a_code_of_another_user_is_409_for_a_back_end(api: Api, redis: Redis) -> None:
    book, code, owner = await api.owned_code()

    response = await api.assign_code(code, new_user())

    assert_problem(response, 409, "code-already-assigned")
    keys = await book_keys(redis, book["id"])
    assert (await redis.hget(f"{keys}:assigned", code)).startswith(f"{owner}|")


async def test_a_code_of_another_book_is_409(api: Api) -> None:
    _, [code] = await api.book_with_codes(1)
    other = await api.create_book()

    response = await api.post(f"/coupons/assign/{code}",
                              {"userId": new_user(), "couponBookId": other["id"]})

    assert_problem(response, 409, "book-mismatch")


async def test_unknown_code_is_404(api: Api) -> None:
    response = await api.assign_code(new_code(), new_user())

    assert_problem(response, 404, "code-not-found")


async def test_a_code_in_the_directory_but_not_in_its_book_is_404(
        api: Api, redis: Redis) -> None:
    """The state an upload that failed between its two Redis steps could leave
    (the directory names the book, the book never got the code): the script
    itself refuses, and nothing changes."""
    book, _ = await api.book_with_codes(1)
    code, user = new_code(), new_user()
    number = await redis.hget("cb:books", book["id"])
    assert number is not None
    await redis.hset(Keys("cb").directory(code), code, number)
    prefix = await book_keys(redis, book["id"])

    response = await api.assign_code(code, user)

    assert_problem(response, 404, "code-not-found")
    assert await redis.scard(f"{prefix}:free") == 1
    assert await redis.hget(f"{prefix}:assigned", code) is None
    assert await redis.zcard(f"{prefix}:user:{user}") == 0
    assert await events(redis, book["id"], "assigned") == []


@pytest.mark.parametrize("code", ["bad!code", "x" * 65, "semi;colon"])
async def test_bad_code_in_path_is_400(api: Api, code: str) -> None:
    problem = assert_problem(await api.assign_code(code, new_user()), 400, "invalid-request")

    assert problem.get("field") == "code"


async def test_end_user_may_assign_for_itself_only(api: Api) -> None:
    book, _ = await api.book_with_codes(2)
    me = new_user()

    mine = await api.assign(book["id"], me, token=api.server.user(me))
    theirs = await api.assign(book["id"], new_user(), token=api.server.user(me))

    assert mine.status_code == 200 and mine.json()["assignedTo"] == me
    assert_problem(theirs, 403, "forbidden")


# --- Idempotency-Key ---------------------------------------------------------


async def test_idempotency_key_replays_the_first_answer(api: Api, redis: Redis) -> None:
    book, _ = await api.book_with_codes(3)
    user = new_user()
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    token = api.server.token("checkout", "coupons:write")

    first = await api.assign(book["id"], user, token=token, headers=key)
    second = await api.assign(book["id"], user, token=token, headers=key)

    assert first.status_code == second.status_code == 200
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    keys = await book_keys(redis, book["id"])
    assert await redis.zcard(f"{keys}:user:{user}") == 1
    assert await redis.scard(f"{keys}:free") == 2
    assert len(await events(redis, book["id"], "assigned")) == 1


async def test_a_retry_spelled_differently_is_the_same_request(api: Api, redis: Redis) -> None:
    """The key is bound to the request, not to its bytes: a retry whose JSON
    has other spacing or field order, or spells out a default, replays."""
    book, [code] = await api.book_with_codes(1)
    user = new_user()
    token = api.server.token("checkout", "coupons:write")
    headers = {**bearer(token), "Content-Type": "application/json",
               "Idempotency-Key": f"order-{uuid.uuid4()}"}
    path = f"/coupons/redeem/{code}"
    assert (await api.assign_code(code, user)).status_code == 200

    first = await api.client.post(path, content=f'{{"userId":"{user}"}}', headers=headers)
    retries = [await api.client.post(path, content=body, headers=headers) for body in (
        f'{{ "userId" : "{user}" }}\n',
        f'{{"lockToken": null, "userId": "{user}"}}',
    )]

    assert first.status_code == 200, first.text
    for retry in retries:
        assert retry.status_code == 200, retry.text
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.json() == first.json()
    assert len(await events(redis, book["id"], "redeemed")) == 1


async def test_idempotency_key_reused_with_another_body_is_409(api: Api, redis: Redis) -> None:
    book, _ = await api.book_with_codes(3)
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    token = api.server.token("checkout", "coupons:write")
    assert (await api.assign(book["id"], new_user(), token=token, headers=key)).status_code == 200

    response = await api.assign(book["id"], new_user(), token=token, headers=key)

    assert_problem(response, 409, "idempotency-key-reused")
    assert len(await events(redis, book["id"], "assigned")) == 1


async def test_the_books_own_record_refuses_a_changed_request_without_the_claim(
        api: Api, redis: Redis) -> None:
    """Two guards hold a key to its first request: the claim (checked before
    the script) and the record the script keeps in the book. With the claim
    gone (say, expired a moment before the record), the script still refuses."""
    book, _ = await api.book_with_codes(3)
    key = f"order-{uuid.uuid4()}"
    token = api.server.token("checkout", "coupons:write")
    first_user, other_user = new_user(), new_user()
    first = await api.assign(book["id"], first_user, token=token,
                             headers={"Idempotency-Key": key})
    assert first.status_code == 200, first.text
    assert await redis.delete(Keys("cb").idempotency_claim("checkout", key)) == 1

    response = await api.assign(book["id"], other_user, token=token,
                                headers={"Idempotency-Key": key})

    assert_problem(response, 409, "idempotency-key-reused")
    prefix = await book_keys(redis, book["id"])
    assert await redis.zcard(f"{prefix}:user:{other_user}") == 0
    assert await redis.scard(f"{prefix}:free") == 2
    assert [e["user"] for e in await events(redis, book["id"], "assigned")] == [first_user]


async def test_idempotency_key_reused_for_another_book_is_409(api: Api, redis: Redis) -> None:
    first_book, _ = await api.book_with_codes(1)
    second_book, _ = await api.book_with_codes(1)
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    token = api.server.token("checkout", "coupons:write")
    user = new_user()
    assert (await api.assign(first_book["id"], user, token=token, headers=key)).status_code == 200

    response = await api.assign(second_book["id"], user, token=token, headers=key)

    assert_problem(response, 409, "idempotency-key-reused")
    assert await events(redis, second_book["id"], "assigned") == []


async def test_idempotency_keys_of_different_callers_do_not_meet(api: Api) -> None:
    book, _ = await api.book_with_codes(2)
    key = {"Idempotency-Key": "same-key-for-both"}
    shop_a = api.server.token("shop-a", "coupons:write")
    shop_b = api.server.token("shop-b", "coupons:write")

    one = await api.assign(book["id"], new_user(), token=shop_a, headers=key)
    two = await api.assign(book["id"], new_user(), token=shop_b, headers=key)

    assert one.status_code == two.status_code == 200
    assert one.json()["code"] != two.json()["code"]
    assert "idempotent-replayed" not in two.headers


async def test_idempotency_key_on_a_named_code_replays(api: Api, redis: Redis) -> None:
    book, [code] = await api.book_with_codes(1)
    user = new_user()
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    token = api.server.token("checkout", "coupons:write")
    path = f"/coupons/assign/{code}"

    first = await api.post(path, {"userId": user}, token=token, headers=key)
    second = await api.post(path, {"userId": user}, token=token, headers=key)
    other = await api.post(path, {"userId": new_user()}, token=token, headers=key)

    assert first.status_code == second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert_problem(other, 409, "idempotency-key-reused")
    assert len(await events(redis, book["id"], "assigned")) == 1


@pytest.mark.parametrize("key", ["has space", "x" * 256])
async def test_malformed_idempotency_key_is_400(api: Api, key: str) -> None:
    book, _ = await api.book_with_codes(1)

    response = await api.assign(book["id"], new_user(), headers={"Idempotency-Key": key})

    problem = assert_problem(response, 400, "invalid-request")
    assert problem.get("field") == "Idempotency-Key"
