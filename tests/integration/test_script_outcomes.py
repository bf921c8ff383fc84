"""Two script replies and the problems they become (store.raise_for): unlocking
a code nobody holds (`not_assigned`), and a code whose book is gone
(`book_not_found`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from couponsvc.keys import Keys

from .api_client import Api
from .names import new_code, new_user
from .problems import assert_problem
from .redis_state import book_keys, events

pytestmark = pytest.mark.integration

ACTIONS = ["assign-code", "lock", "unlock", "redeem"]


async def _act(api: Api, action: str, code: str, user: str, token: str) -> httpx.Response:
    body: dict[str, str] = {"userId": user}
    if action == "unlock":
        body["lockToken"] = "some-lock-token"
    path = "assign" if action == "assign-code" else action
    return await api.post(f"/coupons/{path}/{code}", body, token=token)


# --- unlocking a free code ----------------------------------------------------


async def test_a_back_end_unlocking_a_free_code_is_409_and_the_code_stays_free(
        api: Api, redis: Redis) -> None:
    """A back-end may see that the code exists; it is just not this user's."""
    book, [code] = await api.book_with_codes(1)
    user = new_user()
    prefix = await book_keys(redis, book["id"])

    response = await api.unlock(code, user, "some-lock-token")

    assert_problem(response, 409, "code-not-assigned")
    assert await redis.sismember(f"{prefix}:free", code)
    assert await redis.hget(f"{prefix}:assigned", code) is None
    assert await events(redis, book["id"], "unlocked") == []
    assert (await api.assign_code(code, user)).status_code == 200  # still free to hand out


async def test_an_end_user_unlocking_a_free_code_sees_an_unknown_code(
        api: Api, redis: Redis) -> None:
    """The same 404 as for a code that does not exist: an end user cannot tell
    free codes from made-up ones."""
    book, [code] = await api.book_with_codes(1)
    me = new_user()
    token = api.server.user(me)
    prefix = await book_keys(redis, book["id"])

    free = await api.unlock(code, me, "some-lock-token", token=token)
    unknown = await api.unlock(new_code(), me, "some-lock-token", token=token)

    free_problem = assert_problem(free, 404, "code-not-found")
    unknown_problem = assert_problem(unknown, 404, "code-not-found")
    assert (free_problem["type"], free_problem["title"]) == \
        (unknown_problem["type"], unknown_problem["title"])
    assert await redis.sismember(f"{prefix}:free", code)
    assert await events(redis, book["id"], "unlocked") == []


# --- a code whose book is gone -----------------------------------------------


@pytest.fixture
async def orphan_code(redis: Redis) -> AsyncIterator[str]:
    """A code whose directory entry names a book number with no meta hash: what
    a Redis that lost a book (or a hand-made repair gone wrong) leaves behind.
    The entry is removed again afterwards (the session's Redis is shared)."""
    code = new_code("ORPHAN")
    number = 10**12 + uuid.uuid4().int % 10**9  # far above any number the suite hands out
    directory = Keys("cb").directory(code)
    assert not await redis.exists(f"cb:{{book:{number}}}:meta")
    await redis.hset(directory, code, number)
    try:
        yield code
    finally:
        await redis.hdel(directory, code)


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("who", ["back-end", "end-user"])
async def test_a_code_whose_book_is_gone_is_book_not_found(
        api: Api, orphan_code: str, action: str, who: str) -> None:
    user = new_user()
    token = api.server.writer if who == "back-end" else api.server.user(user)

    response = await _act(api, action, orphan_code, user, token)

    assert_problem(response, 404, "book-not-found")
    # Nothing was handed out: the user holds no code anywhere.
    listed = await api.get(f"/users/{user}/coupons", token=token)
    assert listed.status_code == 200, listed.text
    assert listed.json() == []
