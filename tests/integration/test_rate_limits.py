"""Abuse limits (ratelimit.py) on a real server: a guessing loop is throttled
with 429 + Retry-After, a normal checkout flow never is.

The API here is a second process on the session's Redis (one node and the
cluster) with small limits. Every test acts from its own client address (the
API trusts X-Forwarded-For from 127.0.0.1, uvicorn's default), so the
per-address counters of one test do not leak into another.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from redis.asyncio import Redis

from support.cluster import RedisCluster

from .api_client import Api, http_client
from .conftest import is_cluster
from .names import new_code, new_user
from .problems import assert_problem
from .redis_state import book_keys
from .servers import ApiServer, RedisServer
from .tokens import bearer

pytestmark = pytest.mark.integration

MISSES_PER_CALLER = 5
MISSES_PER_ADDRESS = 8
ASSIGNS_PER_CALLER = 4
# The second server's: fewer assigns per address than the users behind it
# could make each within their own limit.
ASSIGNS_PER_ADDRESS = 6
ASSIGNS_PER_USER = 2
# Every limit here is per minute: a refused caller may try again once the
# window its first counted request opened has passed.
WINDOW_SECONDS = 60
# Requests fired at once by the burst tests, far more than any limit above.
BURST = 20


@pytest.fixture(scope="module")
def limited_server(redis_server: RedisServer | RedisCluster,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    env = {
        "COUPONSVC_RATE_LIMITS": "on",
        "COUPONSVC_RATE_LIMIT_MISSES": f"{MISSES_PER_CALLER}/minute",
        "COUPONSVC_RATE_LIMIT_MISSES_ADDRESS": f"{MISSES_PER_ADDRESS}/minute",
        "COUPONSVC_RATE_LIMIT_ASSIGN": f"{ASSIGNS_PER_CALLER}/minute",
        "COUPONSVC_RATE_LIMIT_ASSIGN_ADDRESS": "100/minute",
    }
    if is_cluster(redis_server):
        env["COUPONSVC_REDIS_CLUSTER"] = "true"
    server = ApiServer(redis_server.url, tmp_path_factory.mktemp("limited"), env).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def address_limited_server(redis_server: RedisServer | RedisCluster,
                           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A small assign limit per client address, the per-caller one well above
    what each user here asks for."""
    env = {
        "COUPONSVC_RATE_LIMITS": "on",
        "COUPONSVC_RATE_LIMIT_ASSIGN": f"{ASSIGNS_PER_CALLER}/minute",
        "COUPONSVC_RATE_LIMIT_ASSIGN_ADDRESS": f"{ASSIGNS_PER_ADDRESS}/minute",
    }
    if is_cluster(redis_server):
        env["COUPONSVC_REDIS_CLUSTER"] = "true"
    server = ApiServer(redis_server.url, tmp_path_factory.mktemp("address-limited"),
                       env).start()
    yield server
    server.stop()


def new_address() -> str:
    """A made-up client address, sent in X-Forwarded-For (trusted from 127.0.0.1)."""
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"


@pytest.fixture
async def limited(limited_server: ApiServer) -> AsyncIterator[Api]:
    # A made-up client address of its own for each test.
    async with http_client(limited_server.base_url) as client:
        client.headers["X-Forwarded-For"] = new_address()
        yield Api(client, limited_server)


@pytest.fixture
async def address_limited(address_limited_server: ApiServer) -> AsyncIterator[Api]:
    async with http_client(address_limited_server.base_url) as client:
        client.headers["X-Forwarded-For"] = new_address()
        yield Api(client, address_limited_server)


def assert_throttled(response: httpx.Response, window_opened: float) -> None:
    """A 429 whose Retry-After is the time left in the window of the limit
    that refused: it opened with the first request counted, at
    `window_opened` or a little later (time.time() taken before that request
    was sent), and runs WINDOW_SECONDS from there. Not a token second that
    would send the client straight back into the limit."""
    body = assert_problem(response, 429, "too-many-requests")
    retry_after = int(response.headers["Retry-After"])
    left = WINDOW_SECONDS - (time.time() - window_opened)
    assert left - 1 <= retry_after <= WINDOW_SECONDS, (retry_after, left)
    assert body["retryAfterSeconds"] == retry_after


async def test_a_guessing_loop_is_throttled(limited: Api) -> None:
    user = new_user()
    token = limited.server.user(user)
    window_opened = time.time()
    answers = [(await limited.lock(new_code("GUESS"), user, token=token)).status_code
               for _ in range(MISSES_PER_CALLER)]
    assert answers == [404] * MISSES_PER_CALLER
    for _ in range(3):
        assert_throttled(await limited.redeem(new_code("GUESS"), user, token=token),
                         window_opened)


async def test_a_throttled_guesser_cannot_use_even_a_real_code(limited: Api) -> None:
    _, code, user = await limited.owned_code()
    token = limited.server.user(user)
    window_opened = time.time()
    for _ in range(MISSES_PER_CALLER):
        assert (await limited.lock(new_code("GUESS"), user, token=token)).status_code == 404
    assert_throttled(await limited.lock(new_code("GUESS"), user, token=token), window_opened)
    # The look-up of its own code is refused too while the window lasts:
    # otherwise the limit would not stop guessing.
    assert_throttled(await limited.lock(code, user, token=token), window_opened)


async def test_a_burst_of_guesses_gets_exactly_the_limit_of_404s(limited: Api) -> None:
    """Look-ups fired all at once: each miss is counted in one step in Redis,
    so however the requests interleave exactly the limit are answered 404,
    and every other one is 429 (not a 404 that lets a guess through)."""
    user = new_user()
    token = limited.server.user(user)
    window_opened = time.time()

    answers = await asyncio.gather(*(limited.lock(new_code("GUESS"), user, token=token)
                                     for _ in range(BURST)))

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [404] * MISSES_PER_CALLER + [429] * (BURST - MISSES_PER_CALLER)
    for answer in answers:
        if answer.status_code == 404:
            assert_problem(answer, 404, "code-not-found")
        else:
            assert_throttled(answer, window_opened)


async def test_a_burst_of_assigns_gets_exactly_the_limit(limited: Api, redis: Redis) -> None:
    """An end user's script firing assigns all at once: exactly the limit are
    served, the rest are 429, and only the served ones took a code."""
    book, codes = await limited.book_with_codes(BURST, maxPerUser=BURST)
    prefix = await book_keys(redis, book["id"])
    user = new_user()
    token = limited.server.user(user)
    window_opened = time.time()

    answers = await asyncio.gather(*(limited.assign(book["id"], user, token=token)
                                     for _ in range(BURST)))

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] * ASSIGNS_PER_CALLER + [429] * (BURST - ASSIGNS_PER_CALLER)
    served = {answer.json()["code"] for answer in answers if answer.status_code == 200}
    for answer in answers:
        if answer.status_code == 429:
            assert_throttled(answer, window_opened)
    assert len(served) == ASSIGNS_PER_CALLER and served <= set(codes)
    assert set(await redis.zrange(f"{prefix}:user:{user}", 0, -1)) == served
    assert await redis.hlen(f"{prefix}:assigned") == ASSIGNS_PER_CALLER
    assert await redis.scard(f"{prefix}:free") == BURST - ASSIGNS_PER_CALLER


async def guesses_from_accounts_behind_one_address(limited: Api) -> list[int]:
    """Two guessed locks from each of several end users, all from the test's
    address, one more pair than the address allows misses: their statuses."""
    answers = []
    for _ in range(MISSES_PER_ADDRESS // 2 + 1):
        user = new_user()
        token = limited.server.user(user)
        for _ in range(2):
            answers.append((await limited.lock(new_code("GUESS"), user, token=token)).status_code)
    return answers


async def test_the_address_limit_spans_users(limited: Api) -> None:
    answers = await guesses_from_accounts_behind_one_address(limited)
    assert answers[:MISSES_PER_ADDRESS] == [404] * MISSES_PER_ADDRESS
    assert set(answers[MISSES_PER_ADDRESS:]) == {429}


async def test_users_sharing_an_address_with_guessers_keep_their_own_look_ups(
        limited: Api) -> None:
    """Behind one NAT or proxy: the guessers' misses put the address over its
    limit, and each guessing account is then refused at its next miss; a user
    who does not guess locks its own code as usual (the whole address was
    refused every look-up, so a few accounts could stop everyone's checkout)."""
    book, code, owner = await limited.owned_code()
    answers = await guesses_from_accounts_behind_one_address(limited)
    assert answers[MISSES_PER_ADDRESS:] == [429, 429]
    fresh_guesser = new_user()

    own = await limited.lock(code, owner, token=limited.server.user(owner))
    guess = await limited.lock(new_code("GUESS"), fresh_guesser,
                               token=limited.server.user(fresh_guesser))

    assert own.status_code == 200, own.text
    assert_problem(guess, 429, "too-many-requests")


async def test_unlocking_unknown_codes_counts_as_guessing(limited: Api) -> None:
    """Unlock looks a code up by name like lock and redeem: its 404s count."""
    user = new_user()
    token = limited.server.user(user)
    answers = [(await limited.unlock(new_code("GUESS"), user, "x", token=token)).status_code
               for _ in range(MISSES_PER_CALLER + 1)]

    assert answers == [404] * MISSES_PER_CALLER + [429]


async def test_a_back_end_is_limited_per_user_it_acts_for(limited: Api) -> None:
    guesser, honest = new_user(), new_user()
    window_opened = time.time()
    for _ in range(MISSES_PER_CALLER):
        assert (await limited.lock(new_code("GUESS"), guesser)).status_code == 404
    assert_throttled(await limited.lock(new_code("GUESS"), guesser), window_opened)
    # The same back-end token, for another user: unaffected.
    assert (await limited.assign_code(new_code("GUESS"), honest)).status_code == 404
    _, [code] = await limited.book_with_codes(1)
    assert (await limited.assign_code(code, honest)).status_code == 200


async def test_normal_checkouts_are_never_throttled(limited: Api) -> None:
    """Far more checkouts than any limit, by one back-end from one address."""
    book, _ = await limited.book_with_codes(3 * MISSES_PER_ADDRESS)
    for _ in range(3 * MISSES_PER_ADDRESS):
        user = new_user()
        assigned = await limited.assign(book["id"], user)
        assert assigned.status_code == 200, assigned.text
        code = assigned.json()["code"]
        locked = await limited.lock(code, user)
        assert locked.status_code == 200, locked.text
        redeemed = await limited.redeem(code, user, locked.json()["lockToken"])
        assert redeemed.status_code == 200, redeemed.text


async def test_an_end_users_own_checkout_is_not_throttled(limited: Api) -> None:
    book, _ = await limited.book_with_codes(ASSIGNS_PER_CALLER, maxPerUser=ASSIGNS_PER_CALLER)
    user = new_user()
    token = limited.server.user(user)
    for _ in range(ASSIGNS_PER_CALLER):
        assigned = await limited.assign(book["id"], user, token=token)
        assert assigned.status_code == 200, assigned.text
        code = assigned.json()["code"]
        for _ in range(3):  # a lock, a timed-out checkout's unlock, a lock again
            locked = await limited.lock(code, user, token=token)
            assert locked.status_code == 200, locked.text
            unlocked = await limited.unlock(code, user, locked.json()["lockToken"], token=token)
            assert unlocked.status_code == 200, unlocked.text
        assert (await limited.redeem(code, user, token=token)).status_code == 200


async def test_hoarding_assigns_are_throttled(limited: Api, redis: Redis) -> None:
    book, _ = await limited.book_with_codes(10, maxPerUser=10)
    user = new_user()
    token = limited.server.user(user)
    window_opened = time.time()
    for _ in range(ASSIGNS_PER_CALLER):
        assert (await limited.assign(book["id"], user, token=token)).status_code == 200
    assert_throttled(await limited.assign(book["id"], user, token=token), window_opened)
    # Refused before the script: no code moved.
    view = (await limited.get(f"/coupons/{book['id']}")).json()
    assert view["counts"]["assigned"] == ASSIGNS_PER_CALLER
    # The counters live under the service's prefix, where operators look.
    counters = [key async for key in redis.scan_iter(match="cb:ratelimit:*", count=1000)]
    assert any(user in key for key in counters), counters


async def test_limits_off_never_throttle(api: Api) -> None:
    """The session's API runs with COUPONSVC_RATE_LIMITS=off (as benchmarks do)."""
    user = new_user()
    token = api.server.user(user)
    answers = {(await api.lock(new_code("GUESS"), user, token=token)).status_code
               for _ in range(3 * MISSES_PER_ADDRESS)}
    assert answers == {404}


async def test_end_users_behind_one_address_share_its_assign_limit(
        address_limited: Api, redis: Redis) -> None:
    """Many accounts on one device (or one abuser's script) cannot each take
    their own per-user share: the address stops them all at its limit."""
    api = address_limited
    book, codes = await api.book_with_codes(20, maxPerUser=ASSIGNS_PER_USER)
    prefix = await book_keys(redis, book["id"])
    window_opened = time.time()
    for _ in range(ASSIGNS_PER_ADDRESS // ASSIGNS_PER_USER):
        user = new_user()
        for _ in range(ASSIGNS_PER_USER):
            assigned = await api.assign(book["id"], user, token=api.server.user(user))
            assert assigned.status_code == 200, assigned.text
    assert await redis.hlen(f"{prefix}:assigned") == ASSIGNS_PER_ADDRESS

    latecomer = new_user()
    token = api.server.user(latecomer)
    assert_throttled(await api.assign(book["id"], latecomer, token=token), window_opened)
    free = str(await redis.srandmember(f"{prefix}:free"))
    assert_throttled(await api.assign_code(free, latecomer, token=token),  # by name too
                     window_opened)

    # Refused before the script: nothing more was handed out.
    assert await redis.hlen(f"{prefix}:assigned") == ASSIGNS_PER_ADDRESS
    assert await redis.sismember(f"{prefix}:free", free)
    assert not await redis.exists(f"{prefix}:user:{latecomer}")
    # The limit is the address's: the same user from another address is served.
    elsewhere = await api.client.post(
        "/coupons/assign", json={"userId": latecomer, "couponBookId": book["id"]},
        headers={**bearer(token), "X-Forwarded-For": new_address()})
    assert elsewhere.status_code == 200, elsewhere.text
    assert elsewhere.json()["code"] in codes


async def test_a_back_end_is_not_held_to_the_address_limit(
        address_limited: Api, redis: Redis) -> None:
    """A checkout back-end sends every user's assigns from a few addresses."""
    api = address_limited
    book, _ = await api.book_with_codes(3 * ASSIGNS_PER_ADDRESS)
    prefix = await book_keys(redis, book["id"])
    for _ in range(3 * ASSIGNS_PER_ADDRESS):
        assigned = await api.assign(book["id"], new_user())
        assert assigned.status_code == 200, assigned.text
    assert await redis.hlen(f"{prefix}:assigned") == 3 * ASSIGNS_PER_ADDRESS


# More assigns in flight at once than the API's Redis pool has connections
# (app.REDIS_MAX_CONNECTIONS, 100). Their limit checks are pipelined, so they
# take none of them; when the checks were the `limits` library's own calls,
# each took one (then on a cluster, whose client cannot wait for a free one,
# the 101st got 503).
POOL_BURST = 300
PAUSE_MS = 700  # under the test server's Redis timeout (2 s)


@pytest.fixture(scope="module")
def roomy_server(redis_server: RedisServer | RedisCluster,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """Limits on, set far above what a test asks for: every request is counted."""
    env = {"COUPONSVC_RATE_LIMITS": "on",
           "COUPONSVC_RATE_LIMIT_ASSIGN": "100000/minute",
           "COUPONSVC_RATE_LIMIT_ASSIGN_ADDRESS": "100000/minute"}
    if is_cluster(redis_server):
        env["COUPONSVC_REDIS_CLUSTER"] = "true"
    server = ApiServer(redis_server.url, tmp_path_factory.mktemp("roomy"), env).start()
    yield server
    server.stop()


async def test_a_burst_of_counted_assigns_past_the_redis_pool_all_answer(
        roomy_server: ApiServer, redis: Redis) -> None:
    """Every assign of a burst is counted and served: none gets 503 for want
    of a pooled connection (under wrk at 256 connections, 57% did before the
    pool waited)."""
    async with http_client(roomy_server.base_url, connections=POOL_BURST) as client:
        api = Api(client, roomy_server)
        book, _ = await api.book_with_codes(POOL_BURST)
        # Redis answers no one for a while, so the burst's limit checks all
        # wait for replies at once, on as many pooled connections as it has.
        await redis.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        responses = await asyncio.gather(*(api.assign(book["id"], new_user())
                                           for _ in range(POOL_BURST)))

    assert sorted({r.status_code for r in responses}) == [200]
    keys = await book_keys(redis, book["id"])
    assert await redis.scard(f"{keys}:free") == 0
