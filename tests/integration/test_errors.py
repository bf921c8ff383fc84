"""Every error is an RFC 9457 problem document, and none leaks internals."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from starlette.types import Receive, Scope, Send

from couponsvc.app import create_app
from couponsvc.coupons import Coupons
from couponsvc.settings import Settings
from couponsvc.store import Store

from .api_client import Api
from .names import new_code, new_user
from .problems import assert_problem
from .redis_state import book_keys
from .servers import MAX_UPLOAD_BYTES, RedisServer, started
from .tokens import ADMIN, WRITE, bearer, make_token

pytestmark = pytest.mark.integration

SMALL_BODY_BYTES = 64 * 1024  # every body but an upload of codes

POST_ROUTES = ["/coupons", "/coupons/codes", "/coupons/assign", "/coupons/assign/SOMECODE",
               "/coupons/lock/SOMECODE", "/coupons/unlock/SOMECODE", "/coupons/redeem/SOMECODE"]


@pytest.mark.parametrize("path", POST_ROUTES)
async def test_non_json_body_is_415_on_every_post_route(api: Api, path: str) -> None:
    response = await api.client.post(
        path, content=b"userId=u", headers={**bearer(api.server.admin),
                                            "Content-Type": "application/x-www-form-urlencoded"})

    assert_problem(response, 415, "unsupported-media-type")


@pytest.mark.parametrize("path", POST_ROUTES)
async def test_a_body_in_another_charset_than_utf8_is_415(api: Api, path: str) -> None:
    body = json.dumps({"userId": "u", "couponBookId": str(uuid.uuid4())}).encode("utf-16")

    response = await api.client.post(
        path, content=body, headers={**bearer(api.server.admin),
                                     "Content-Type": "application/json; charset=UTF-16"})

    problem = assert_problem(response, 415, "unsupported-media-type")
    assert problem["detail"] == "send the body in UTF-8, not charset=utf-16"


@pytest.mark.parametrize("charset", ["utf-8", '"UTF-8"', "us-ascii"])
async def test_a_utf8_charset_parameter_is_accepted(api: Api, charset: str) -> None:
    book, _ = await api.book_with_codes(1)
    body = json.dumps({"userId": new_user(), "couponBookId": book["id"]}).encode()

    response = await api.client.post(
        "/coupons/assign", content=body,
        headers={**bearer(api.server.admin),
                 "Content-Type": f"application/json; foo=bar; charset={charset}"})

    assert response.status_code == 200, response.text
    assert response.json()["couponBookId"] == book["id"]


@pytest.mark.parametrize("media", ["application/vnd.api+json", "application/merge-patch+json",
                                   "Application/Vnd.Api+JSON"])
async def test_a_json_suffix_type_is_read_as_json(api: Api, media: str) -> None:
    """docs/api.md, Bodies: any `+json` type is JSON (RFC 6839)."""
    book, [code] = await api.book_with_codes(1)
    user = new_user()
    body = json.dumps({"userId": user, "couponBookId": book["id"]}).encode()

    response = await api.client.post(
        "/coupons/assign", content=body,
        headers={**bearer(api.server.writer), "Content-Type": media})

    assert response.status_code == 200, response.text
    assert (response.json()["code"], response.json()["assignedTo"]) == (code, user)


async def test_a_body_without_content_type_is_read_as_json(api: Api) -> None:
    """docs/api.md, Bodies: a client that sends no Content-Type (curl -d
    without -H, a bare fetch) is not refused."""
    book, [code] = await api.book_with_codes(1)
    user = new_user()
    body = json.dumps({"userId": user, "couponBookId": book["id"]}).encode()

    response = await api.client.post("/coupons/assign", content=body,
                                     headers=bearer(api.server.writer))

    assert "content-type" not in response.request.headers
    assert response.status_code == 200, response.text
    assert (response.json()["code"], response.json()["assignedTo"]) == (code, user)
    [listed] = (await api.get(f"/users/{user}/coupons")).json()
    assert listed["code"] == code


@pytest.mark.parametrize("path", POST_ROUTES)
@pytest.mark.parametrize("raw", [b'{"userId": ', b"null", b"[1, 2]", b'"text"'],
                         ids=["truncated", "null", "array", "string"])
async def test_body_that_is_not_a_json_object_is_400(api: Api, path: str, raw: bytes) -> None:
    response = await api.client.post(
        path, content=raw, headers={**bearer(api.server.admin),
                                    "Content-Type": "application/json"})

    assert_problem(response, 400, "invalid-request")


@pytest.mark.parametrize("path", POST_ROUTES[2:])
async def test_checkout_routes_refuse_bodies_over_64_kib(api: Api, path: str) -> None:
    body = {"userId": "u", "couponBookId": str(uuid.uuid4()), "padding": "x" * 70_000}

    response = await api.post(path, body)

    assert_problem(response, 413, "payload-too-large")


async def test_a_create_over_64_kib_is_413_and_makes_no_book(api: Api, redis: Redis) -> None:
    """A valid body, padded with JSON whitespace past the limit: refused for
    its size alone (without the limit it would make a book)."""
    body = json.dumps({"name": f"too big {uuid.uuid4()}"}).encode()
    body += b" " * (SMALL_BODY_BYTES + 1 - len(body))
    books_before = await redis.hlen("cb:books")

    response = await api.client.post(
        "/coupons", content=body,
        headers={**bearer(api.server.admin), "Content-Type": "application/json"})

    assert_problem(response, 413, "payload-too-large")
    assert await redis.hlen("cb:books") == books_before


async def _text_body(codes: list[str], size: int) -> AsyncIterator[bytes]:
    """`codes` one per line, in chunks of about 64 KiB, `size` bytes in all
    (sent chunked: no Content-Length for the server to refuse up front)."""
    text = "\n".join(codes).encode()
    text += b"\n" * (size - len(text))
    for start in range(0, len(text), 65_536):
        yield text[start:start + 65_536]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_text_upload_over_the_body_limit_is_413_and_adds_no_code(
        api: Api, redis: Redis, framing: str) -> None:
    """One byte over COUPONSVC_MAX_BODY_BYTES, every line a valid code: the
    whole upload is refused, not the codes that fit."""
    book = await api.create_book()
    codes = [new_code() for _ in range(MAX_UPLOAD_BYTES // 40)]
    size = MAX_UPLOAD_BYTES + 1
    content: bytes | AsyncIterator[bytes] = _text_body(codes, size)
    if framing == "content-length":
        content = b"".join([chunk async for chunk in _text_body(codes, size)])
        assert len(content) == size

    response = await api.client.post(
        "/coupons/codes", params={"couponBookId": book["id"]}, content=content,
        headers={**bearer(api.server.admin), "Content-Type": "text/plain"})

    assert ("content-length" in response.request.headers) == (framing == "content-length")
    assert_problem(response, 413, "payload-too-large")
    view = (await api.get(f"/coupons/{book['id']}")).json()
    assert view["counts"]["total"] == 0
    prefix = await book_keys(redis, book["id"])
    assert await redis.scard(f"{prefix}:free") == 0
    assert_problem(await api.assign_code(codes[0], new_user()), 404, "code-not-found")


async def test_unknown_route_is_a_404_problem(api: Api) -> None:
    response = await api.client.get("/no/such/route")

    assert_problem(response, 404, "not-found")


async def test_a_trailing_slash_is_a_404_problem_not_a_redirect(api: Api) -> None:
    # POST /coupons/assign/ is /coupons/assign/{code} with an empty code. It was
    # a 307 to /coupons/assign: a client that follows redirects got a random code.
    book, _ = await api.book_with_codes(2)
    user = new_user()

    assign = await api.client.post(
        "/coupons/assign/", json={"userId": user, "couponBookId": book["id"]},
        headers=bearer(api.server.writer), follow_redirects=True)
    read = await api.client.get(f"/coupons/{book['id']}/", headers=bearer(api.server.admin),
                                follow_redirects=True)

    assert_problem(assign, 404, "not-found")
    assert_problem(read, 404, "not-found")
    assert not assign.history and not read.history  # answered, not redirected
    assert (await api.get(f"/users/{user}/coupons")).json() == []
    assert (await api.get(f"/coupons/{book['id']}")).json()["counts"]["assigned"] == 0


@pytest.mark.parametrize(("method", "path"), [("DELETE", "/coupons"), ("GET", "/coupons/assign/X"),
                                              ("PUT", "/coupons/lock/X"), ("POST", "/healthz")])
async def test_wrong_method_is_a_405_problem(api: Api, method: str, path: str) -> None:
    response = await api.client.request(method, path, headers=bearer(api.server.admin))

    assert_problem(response, 405, "method-not-allowed")


@pytest.mark.parametrize("path", ["/coupons/codes", "/coupons/assign"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS"])
async def test_a_405_allows_the_methods_of_its_own_path(api: Api, method: str, path: str) -> None:
    # Schema fuzzing found these taken for GET /coupons/{couponBookId}: a GET was
    # a 404 (no book "codes"), the others a 405 with Allow: GET, HEAD.
    response = await api.client.request(method, path, headers=bearer(api.server.admin))

    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "POST"


async def test_one_of_each_error_a_request_can_provoke_is_a_clean_problem(api: Api) -> None:
    """A walk through the errors a client can meet, checking each body. Not
    here: 429 (rate limits are off on this server; test_rate_limits.py), 503
    (test_redis_down.py), and 500 or the plain 409 conflict (a bug or a race)."""
    book, code, owner = await api.owned_code(maxPerUser=1)
    empty = await api.create_book()
    _, [unstarted] = await api.book_with_codes(
        1, validFrom=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    as_admin = bearer(api.server.admin)
    form = {**as_admin, "Content-Type": "application/x-www-form-urlencoded"}
    too_large = {"userId": owner, "couponBookId": book["id"], "padding": "x" * 70_000}
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}

    assert_problem(await api.post("/coupons", {"name": 1}, token=api.server.admin),
                   400, "invalid-request")
    assert_problem(await api.client.get("/users/u/coupons"), 401, "unauthorized")
    assert_problem(await api.post("/coupons", {"name": "x"}), 403, "forbidden")
    assert_problem(await api.client.get("/no/such/route", headers=as_admin), 404, "not-found")
    assert_problem(await api.assign(str(uuid.uuid4()), new_user()), 404, "book-not-found")
    assert_problem(await api.lock(new_code(), owner), 404, "code-not-found")
    assert_problem(await api.client.delete("/coupons", headers=as_admin),
                   405, "method-not-allowed")
    assert_problem(await api.post("/coupons/assign", too_large), 413, "payload-too-large")
    assert_problem(await api.client.post("/coupons/assign", content=b"userId=u", headers=form),
                   415, "unsupported-media-type")
    assert_problem(await api.assign(empty["id"], new_user()), 409, "book-exhausted")
    assert_problem(await api.assign(book["id"], owner), 409, "user-limit-reached")
    assert_problem(await api.assign_code(code, new_user()), 409, "code-already-assigned")
    assert_problem(await api.lock(code, new_user()), 409, "code-not-assigned")
    assert_problem(await api.unlock(code, owner, "none"), 409, "not-locked")
    assert_problem(await api.post(f"/coupons/assign/{code}",
                                  {"userId": owner, "couponBookId": empty["id"]}),
                   409, "book-mismatch")
    assert_problem(await api.assign_code(unstarted, new_user()), 409, "book-not-active")
    # Assigning the owner's code to its owner again changes nothing; the key is now bound.
    again = await api.post(f"/coupons/assign/{code}", {"userId": owner}, headers=key)
    assert again.status_code == 200, again.text
    assert_problem(await api.post(f"/coupons/assign/{code}", {"userId": new_user()},
                                  headers=key),
                   409, "idempotency-key-reused")
    lock = (await api.lock(code, owner)).json()
    assert_problem(await api.redeem(code, owner), 423, "code-locked")
    assert (await api.redeem(code, owner, lock["lockToken"])).status_code == 200
    assert_problem(await api.redeem(code, owner), 423, "code-redeemed")


async def test_a_key_used_for_a_random_assign_is_409_for_an_assign_by_code(
        api: Api, redis: Redis) -> None:
    """A key belongs to one request, its path included: the random assign's
    very bytes sent to /coupons/assign/{code} are another request, which
    must neither replay the random assign's answer nor take the code."""
    book, codes = await api.book_with_codes(2)
    user = new_user()
    headers = {**bearer(api.server.writer), "Content-Type": "application/json",
               "Idempotency-Key": f"order-{uuid.uuid4()}"}
    body = json.dumps({"userId": user, "couponBookId": book["id"]}).encode()
    first = await api.client.post("/coupons/assign", content=body, headers=headers)
    assert first.status_code == 200, first.text
    [other] = set(codes) - {first.json()["code"]}
    prefix = await book_keys(redis, book["id"])
    events_before = await redis.xlen(f"{prefix}:events")

    response = await api.client.post(f"/coupons/assign/{other}", content=body, headers=headers)

    assert_problem(response, 409, "idempotency-key-reused")
    assert await redis.sismember(f"{prefix}:free", other)
    assert await redis.hget(f"{prefix}:assigned", other) is None
    assert await redis.zrange(f"{prefix}:user:{user}", 0, -1) == [first.json()["code"]]
    assert await redis.xlen(f"{prefix}:events") == events_before


# --- a bug inside a handler: 500, logged, nothing leaked ----------------------
#
# A bug cannot be provoked from outside a correct server, so these tests host
# the real app in-process (httpx's ASGI transport, on a redis-server of their
# own) and break one of its parts. What is under test is the app's mapping of
# an unexpected exception, which is the same in any server.

IN_PROCESS_SECRET = "in-process-secret-of-well-over-thirty-two-characters"
# Would betray internals if any of it reached a client.
INTERNALS = "password=hunter2 in /srv/couponsvc/internal.py"
SURPRISE_STATUS = "surprise_status_from_a_newer_script"


@pytest.fixture
async def in_process(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app from create_app, its lifespan run as a server runs it."""
    with started(RedisServer(tmp_path)) as redis:
        settings = Settings(env="test", redis_url=redis.url, jwt_secret=IN_PROCESS_SECRET,
                            rate_limits=False)
        app = create_app(settings)
        async with app.router.lifespan_context(app) as state:

            async def served(scope: Scope, receive: Receive, send: Send) -> None:
                scope["state"] = dict(state or {})  # what a server copies into each request
                await app(scope, receive, send)

            # Starlette re-raises a 500's exception to the server after answering
            # (a server logs it); the transport would raise it here.
            transport = httpx.ASGITransport(app=served, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport,
                                         base_url="http://in-process") as client:
                yield client


def _in_process_token(scope: str) -> dict[str, str]:
    return bearer(make_token(IN_PROCESS_SECRET, "ops", scope))


def _script_answers_an_unknown_status(monkeypatch: pytest.MonkeyPatch) -> str:
    """The assign script answers a status this code does not know (a script
    and a service of different versions): store.raise_for's last resort."""
    real_run = Store.run

    def run(self: Store, name: str, keys: Sequence[str],
            args: Sequence[Any] = ()) -> Awaitable[Any]:
        if name != "assign_random":
            return real_run(self, name, keys, args)

        async def reply() -> list[str]:
            return [SURPRISE_STATUS]

        return reply()

    monkeypatch.setattr(Store, "run", run)
    return SURPRISE_STATUS


def _service_raises(monkeypatch: pytest.MonkeyPatch) -> str:
    async def assign_random(*_: Any) -> Any:
        raise RuntimeError(INTERNALS)

    monkeypatch.setattr(Coupons, "assign_random", assign_random)
    return INTERNALS


@pytest.mark.parametrize("fault", [_script_answers_an_unknown_status, _service_raises],
                         ids=["unknown-script-status", "service-raises"])
async def test_an_unexpected_error_is_a_500_problem_that_leaks_nothing_and_is_logged(
        in_process: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, fault: Any) -> None:
    client = in_process
    admin, writer = _in_process_token(f"{ADMIN} {WRITE}"), _in_process_token(WRITE)
    created = await client.post("/coupons", json={"name": "in process"}, headers=admin)
    assert created.status_code == 201, created.text
    book_id = created.json()["id"]
    added = await client.post(
        "/coupons/codes", json={"couponBookId": book_id, "codes": [new_code(), new_code()]},
        headers=admin)
    assert added.status_code == 200, added.text
    secret = fault(monkeypatch)
    caplog.set_level(logging.ERROR, logger="couponsvc")

    assign = {"userId": "u1", "couponBookId": book_id}
    response = await client.post("/coupons/assign", json=assign, headers=writer)

    body = assert_problem(response, 500, "internal-error")
    assert body["type"] == "/problems/internal-error"
    assert set(body) == {"type", "title", "status", "detail"}
    for internal in (secret, "RuntimeError", "unexpected script status", "Traceback",
                     "assign_random"):
        assert internal not in response.text
    logged = [r for r in caplog.records
              if r.name == "couponsvc" and r.getMessage() == "unhandled error"]
    assert len(logged) == 1, caplog.text
    assert logged[0].levelno == logging.ERROR
    assert logged[0].exc_info is not None
    assert isinstance(logged[0].exc_info[1], RuntimeError)
    assert secret in str(logged[0].exc_info[1])  # the operator sees what the client did not
    # The app keeps serving once the part works again.
    monkeypatch.undo()
    again = await client.post("/coupons/assign", json=assign, headers=writer)
    assert again.status_code == 200, again.text


@pytest.mark.parametrize("twice", ["Authorization", "Idempotency-Key", "Content-Type"])
async def test_a_header_that_decides_the_request_sent_twice_is_400(
        api: Api, twice: str) -> None:
    """Which of two tokens, keys or media types would count is a guess."""
    book, _ = await api.book_with_codes(1)
    headers = [("Authorization", f"Bearer {api.server.writer}"),
               ("Idempotency-Key", "dup-1"), ("Content-Type", "application/json"),
               ("X-Note", "a"), ("X-Note", "b")]  # any other header may repeat
    headers += [(twice, dict(headers)[twice])]
    body = json.dumps({"couponBookId": book["id"], "userId": new_user()})

    response = await api.client.post("/coupons/assign", content=body, headers=headers)

    problem = assert_problem(response, 400, "invalid-request")
    assert problem["field"] == twice


async def test_other_headers_may_repeat(api: Api) -> None:
    book, _ = await api.book_with_codes(1)
    headers = [("Authorization", f"Bearer {api.server.writer}"), ("X-Note", "a"),
               ("X-Note", "b"), ("Accept", "application/json"), ("Accept", "*/*")]

    response = await api.client.post("/coupons/assign", json={
        "couponBookId": book["id"], "userId": new_user()}, headers=headers)

    assert response.status_code == 200, response.text
