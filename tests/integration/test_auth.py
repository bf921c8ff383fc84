"""Bearer tokens (HS256 JWT) and the scope rules."""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning
from redis.asyncio import Redis

from .api_client import Api, http_client
from .names import new_code, new_user
from .problems import assert_problem
from .redis_state import book_keys
from .servers import ApiServer, Stack
from .tokens import ADMIN, AUDIENCE, ISSUER, WRITE, bearer, make_token, unsigned_token

pytestmark = pytest.mark.integration

OTHER_KEY = "an-entirely-different-secret-of-48-characters!!"


def _hs512(server: ApiServer) -> str:
    """The right key, but an algorithm the deployment did not configure."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)  # 48 bytes is short for HS512
        return jwt.encode({"sub": "admin", "scope": ADMIN, "exp": int(time.time()) + 60},
                          server.secret, algorithm="HS512")


def _authorization(case: str, server: ApiServer) -> str | None:
    """The Authorization header of one kind of bad credential."""
    tokens: dict[str, Callable[[], str | None]] = {
        "no-header": lambda: None,
        "empty-bearer": lambda: "Bearer",
        "basic-scheme": lambda: "Basic YWRtaW46YWRtaW4=",
        "token-without-scheme": lambda: server.admin,
        "garbage": lambda: "Bearer not.a.jwt",
        "alg-none": lambda: f"Bearer {unsigned_token('admin')}",
        "wrong-key": lambda: f"Bearer {server.token('admin', f'{ADMIN} {WRITE}', key=OTHER_KEY)}",
        "hs512": lambda: f"Bearer {_hs512(server)}",
        "expired": lambda: f"Bearer {server.token('admin', ADMIN, ttl=-30)}",
        "missing-sub": lambda: f"Bearer {server.token(None, ADMIN)}",
        "empty-sub": lambda: f"Bearer {server.token('', ADMIN)}",
        "missing-exp": lambda: f"Bearer {server.token('admin', ADMIN, ttl=None)}",
        "not-yet-valid": lambda: f"Bearer {server.token('admin', ADMIN, nbf=time.time() + 600)}",
        "scope-not-a-string": lambda: f"Bearer {server.token('admin', [ADMIN])}",
        "unexpected-audience": lambda: f"Bearer {server.token('admin', ADMIN, aud='elsewhere')}",
        # Signed, but not Unicode: no Redis key (rate limits, idempotency) can hold it.
        "lone-surrogate-sub": lambda: "Bearer " + server.token("admin-\ud800", ADMIN),
        # Past any float (exp's seconds were read as one: a 500).
        "exp-beyond-floats": lambda: f"Bearer {server.token('admin', ADMIN, exp=10**400)}",
    }
    return tokens[case]()


BAD_CREDENTIALS = ["no-header", "empty-bearer", "basic-scheme", "token-without-scheme",
                   "garbage", "alg-none", "wrong-key", "hs512", "expired", "missing-sub",
                   "empty-sub", "missing-exp", "not-yet-valid", "scope-not-a-string",
                   "unexpected-audience", "lone-surrogate-sub", "exp-beyond-floats"]


# RFC 6750 section 3.1: no error code when the request carried no credentials,
# error="invalid_token" when it carried a bearer token that does not verify.
NO_CREDENTIALS_CHALLENGE = "Bearer"
INVALID_TOKEN_CHALLENGE = 'Bearer error="invalid_token"'
# The credential cases that send a token in the Bearer scheme (the others send
# none, or no Bearer scheme: only the challenge's scheme is checked for those).
INVALID_TOKENS = ["garbage", "alg-none", "wrong-key", "hs512", "expired", "missing-sub",
                  "empty-sub", "missing-exp", "not-yet-valid", "scope-not-a-string",
                  "unexpected-audience", "lone-surrogate-sub", "exp-beyond-floats"]


def assert_unauthorized(response: httpx.Response) -> dict[str, Any]:
    problem = assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer"), response.headers
    return problem


@pytest.mark.parametrize("case", BAD_CREDENTIALS)
async def test_bad_credentials_are_401(api: Api, case: str) -> None:
    header = _authorization(case, api.server)
    headers = {} if header is None else {"Authorization": header}

    response = await api.client.post("/coupons", json={"name": "never"}, headers=headers)

    assert_unauthorized(response)


async def test_an_end_user_whose_sub_is_not_unicode_is_401_on_an_assign(api: Api) -> None:
    """Rate limits key their counters on the caller: such a sub was a 500 there."""
    book, _ = await api.book_with_codes(1)
    sub = "user-\udcff"  # what `couponsvc token --sub $'user-\xff'` signs
    token = api.server.token(sub)

    response = await api.post("/coupons/assign", {"couponBookId": book["id"], "userId": "user-x"},
                              token=token, headers={"Idempotency-Key": "k-1"})

    assert_unauthorized(response)


NO_BEARER_TOKEN = ["no-header", "empty-bearer", "basic-scheme", "token-without-scheme"]


@pytest.mark.parametrize("case", NO_BEARER_TOKEN)
async def test_a_request_without_a_bearer_token_is_challenged_without_an_error_code(
        api: Api, case: str) -> None:
    """A client that did not know it had to authenticate, or tried another
    scheme, is told the scheme, not that its (absent) token is invalid
    (RFC 6750, section 3.1)."""
    header = _authorization(case, api.server)
    headers = {} if header is None else {"Authorization": header}

    response = await api.client.post("/coupons", json={"name": "never"}, headers=headers)

    assert_unauthorized(response)
    assert response.headers.get_list("www-authenticate") == [NO_CREDENTIALS_CHALLENGE]


@pytest.mark.parametrize("case", INVALID_TOKENS)
async def test_a_bad_token_is_challenged_with_invalid_token(api: Api, case: str) -> None:
    """A client library refreshes its token on error="invalid_token"."""
    header = _authorization(case, api.server)
    assert header is not None

    response = await api.client.post("/coupons", json={"name": "never"},
                                     headers={"Authorization": header})

    assert_unauthorized(response)
    assert response.headers.get_list("www-authenticate") == [INVALID_TOKEN_CHALLENGE]


SOME_BOOK = str(uuid.UUID(int=7))
PROTECTED = [
    pytest.param("POST", "/coupons", {"name": "x"}, id="create-book"),
    pytest.param("GET", f"/coupons/{SOME_BOOK}", None, id="get-book"),
    pytest.param("POST", "/coupons/codes", {"couponBookId": SOME_BOOK, "codes": ["A1"]},
                 id="upload"),
    pytest.param("POST", "/coupons/assign", {"userId": "u", "couponBookId": SOME_BOOK},
                 id="assign"),
    pytest.param("POST", "/coupons/assign/SOMECODE", {"userId": "u"}, id="assign-code"),
    pytest.param("POST", "/coupons/lock/SOMECODE", {"userId": "u"}, id="lock"),
    pytest.param("POST", "/coupons/unlock/SOMECODE", {"userId": "u", "lockToken": "t"},
                 id="unlock"),
    pytest.param("POST", "/coupons/redeem/SOMECODE", {"userId": "u"}, id="redeem"),
    pytest.param("GET", "/users/u/coupons", None, id="list"),
]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
@pytest.mark.parametrize("case", ["no-header", "expired"])
async def test_every_route_but_health_needs_a_token(
        api: Api, method: str, path: str, body: Any, case: str) -> None:
    header = _authorization(case, api.server)
    headers = {} if header is None else {"Authorization": header}

    response = await api.client.request(method, path, json=body, headers=headers)

    assert_unauthorized(response)
    expected = NO_CREDENTIALS_CHALLENGE if case == "no-header" else INVALID_TOKEN_CHALLENGE
    assert response.headers.get_list("www-authenticate") == [expected]


ADMIN_ONLY = [("POST", "/coupons"), ("GET", "/coupons/{book}"), ("POST", "/coupons/codes")]


@pytest.mark.parametrize(("method", "path"), ADMIN_ONLY, ids=[p for _, p in ADMIN_ONLY])
@pytest.mark.parametrize("who", ["writer", "end-user", "unknown-scope"])
async def test_admin_routes_refuse_other_tokens(
        api: Api, redis: Redis, method: str, path: str, who: str) -> None:
    book = await api.create_book()
    before = (await api.get(f"/coupons/{book['id']}")).json()
    books = await redis.hlen("cb:books")
    token = {"writer": api.server.writer, "end-user": api.server.user(new_user()),
             "unknown-scope": api.server.token("admin", "coupons:superuser")}[who]
    code = new_code()
    body = {"name": "x"} if path == "/coupons" else {"couponBookId": book["id"], "codes": [code]}

    response = await api.client.request(method, path.format(book=book["id"]),
                                        json=body if method == "POST" else None,
                                        headers=bearer(token))

    assert_problem(response, 403, "forbidden")
    assert await redis.hlen("cb:books") == books  # no book created
    assert (await api.get(f"/coupons/{book['id']}")).json() == before  # no code added
    assert (await api.upload(book["id"], [code]))["added"] == 1  # the code is still free


async def test_admin_token_is_accepted(api: Api) -> None:
    token = api.server.token("ops", ADMIN)

    response = await api.post("/coupons", {"name": "by admin"}, token=token)

    assert response.status_code == 201


async def test_admin_may_act_for_any_user(api: Api) -> None:
    book, _ = await api.book_with_codes(1)

    response = await api.assign(book["id"], new_user(), token=api.server.token("ops", ADMIN))

    assert response.status_code == 200


@pytest.mark.parametrize("who", ["writer", "end-user"])
async def test_only_an_operator_may_unlock_without_the_lock_token(api: Api, redis: Redis,
                                                                   who: str) -> None:
    """An operator can free a code whose lock token was lost (a lock may last
    a day); a checkout must prove it holds the lock."""
    book, code, owner = await api.owned_code()
    lock_key = f"{await book_keys(redis, book['id'])}:lock:{code}"
    locked = await api.lock(code, owner, 3600)
    assert locked.status_code == 200, locked.text
    caller = api.server.writer if who == "writer" else api.server.user(owner)

    refused = await api.post(f"/coupons/unlock/{code}", {"userId": owner}, token=caller)
    still = await redis.exists(lock_key)
    freed = await api.post(f"/coupons/unlock/{code}", {"userId": owner},
                           token=api.server.token("ops", ADMIN))

    problem = assert_problem(refused, 403, "forbidden")
    assert "lockToken" in problem["detail"]
    assert still == 1
    assert freed.status_code == 200, freed.text
    assert (freed.json()["status"], freed.json()["locked"]) == ("assigned", False)
    assert await redis.exists(lock_key) == 0
    relocked = await api.lock(code, owner, token=caller)
    assert relocked.status_code == 200, relocked.text


@pytest.mark.parametrize("action", ["assign", "assign-code", "lock", "unlock", "redeem",
                                    "list"])
async def test_end_user_cannot_act_for_another_user(api: Api, action: str) -> None:
    book, code, owner = await api.owned_code()
    me = new_user()
    token = api.server.user(me)
    calls = {
        "assign": lambda: api.assign(book["id"], owner, token=token),
        "assign-code": lambda: api.assign_code(new_code(), owner, token=token),
        "lock": lambda: api.lock(code, owner, token=token),
        "unlock": lambda: api.unlock(code, owner, "t", token=token),
        "redeem": lambda: api.redeem(code, owner, token=token),
        "list": lambda: api.get(f"/users/{owner}/coupons", token=token),
    }

    response = await calls[action]()

    assert_problem(response, 403, "forbidden")
    assert (await api.lock(code, owner)).status_code == 200  # the code was left alone


@pytest.mark.parametrize("action", ["assign-code", "lock", "unlock", "redeem"])
async def test_end_user_sees_another_users_code_as_unknown(api: Api, action: str) -> None:
    """The same 404 as for a code that does not exist, so codes cannot be probed."""
    _, code, _ = await api.owned_code()
    me = new_user()
    token = api.server.user(me)

    async def call(target: str) -> httpx.Response:
        body: dict[str, str] = {"userId": me}
        if action == "unlock":
            body["lockToken"] = "t"
        path = "assign" if action == "assign-code" else action
        return await api.post(f"/coupons/{path}/{target}", body, token=token)

    taken = await call(code)
    unknown = await call(new_code())

    taken_problem = assert_problem(taken, 404, "code-not-found")
    unknown_problem = assert_problem(unknown, 404, "code-not-found")
    assert taken_problem["type"] == unknown_problem["type"]
    assert taken_problem["title"] == unknown_problem["title"]
    assert set(taken_problem) == set(unknown_problem)


async def test_end_user_sees_a_free_code_it_does_not_own_as_unknown_when_locking(
        api: Api) -> None:
    _, [code] = await api.book_with_codes(1)
    me = new_user()

    response = await api.lock(code, me, token=api.server.user(me))

    assert_problem(response, 404, "code-not-found")


async def test_end_user_naming_the_wrong_book_sees_an_unknown_code(api: Api) -> None:
    _, [code] = await api.book_with_codes(1)
    other = await api.create_book()
    me = new_user()

    response = await api.post(f"/coupons/assign/{code}",
                              {"userId": me, "couponBookId": other["id"]},
                              token=api.server.user(me))

    assert_problem(response, 404, "code-not-found")


async def test_end_user_runs_its_own_checkout(api: Api) -> None:
    book, _ = await api.book_with_codes(1)
    me = new_user()
    token = api.server.user(me)

    code = (await api.assign(book["id"], me, token=token)).json()["code"]
    lock = await api.lock(code, me, token=token)
    redeem = await api.redeem(code, me, lock.json()["lockToken"], token=token)
    listed = await api.get(f"/users/{me}/coupons", token=token)

    assert lock.status_code == 200 and redeem.status_code == 200
    assert [c["status"] for c in listed.json()] == ["redeemed"]


# --- a deployment that pins the audience and the issuer ----------------------


@pytest.fixture
async def aud_iss(aud_iss_stack: Stack) -> AsyncIterator[Api]:
    async with http_client(aud_iss_stack.api.base_url) as client:
        yield Api(client, aud_iss_stack.api)


def _pinned(server: ApiServer, **claims: Any) -> str:
    return make_token(server.secret, "checkout", WRITE, **claims)


async def test_token_with_the_right_audience_and_issuer_is_accepted(aud_iss: Api) -> None:
    token = _pinned(aud_iss.server, aud=AUDIENCE, iss=ISSUER)

    response = await aud_iss.get(f"/users/{new_user()}/coupons", token=token)

    assert response.status_code == 200, response.text


async def test_audience_may_be_one_of_a_list(aud_iss: Api) -> None:
    token = _pinned(aud_iss.server, aud=["other-api", AUDIENCE], iss=ISSUER)

    response = await aud_iss.get(f"/users/{new_user()}/coupons", token=token)

    assert response.status_code == 200, response.text


@pytest.mark.parametrize("claims", [
    {"aud": "other-api", "iss": ISSUER},
    {"iss": ISSUER},
    {"aud": AUDIENCE, "iss": "https://evil.test/"},
    {"aud": AUDIENCE},
], ids=["wrong-audience", "no-audience", "wrong-issuer", "no-issuer"])
async def test_wrong_audience_or_issuer_is_401(aud_iss: Api, claims: dict[str, str]) -> None:
    token = _pinned(aud_iss.server, **claims)

    response = await aud_iss.get(f"/users/{new_user()}/coupons", token=token)

    assert_unauthorized(response)
    assert response.headers.get_list("www-authenticate") == [INVALID_TOKEN_CHALLENGE]
