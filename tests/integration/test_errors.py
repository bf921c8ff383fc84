"""Every error is an RFC 9457 problem document, and none leaks internals."""

from __future__ import annotations

import uuid

import httpx
import pytest

from .api_client import Api
from .names import new_code, new_user
from .problems import assert_problem
from .tokens import bearer

pytestmark = pytest.mark.integration

POST_ROUTES = ["/coupons", "/coupons/codes", "/coupons/assign", "/coupons/assign/SOMECODE",
               "/coupons/lock/SOMECODE", "/coupons/unlock/SOMECODE", "/coupons/redeem/SOMECODE"]


@pytest.mark.parametrize("path", POST_ROUTES)
async def test_non_json_body_is_415_on_every_post_route(api: Api, path: str) -> None:
    response = await api.client.post(
        path, content=b"userId=u", headers={**bearer(api.server.admin),
                                            "Content-Type": "application/x-www-form-urlencoded"})

    assert_problem(response, 415, "unsupported-media-type")


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


async def test_unknown_route_is_a_404_problem(api: Api) -> None:
    response = await api.client.get("/no/such/route")

    assert_problem(response, 404, "not-found")


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


async def test_one_of_every_kind_of_error_is_a_clean_problem(api: Api) -> None:
    """A walk through the error statuses a client can meet, checking each body."""
    book, code, owner = await api.owned_code(maxPerUser=1)
    empty = await api.create_book()
    seen: set[tuple[int, str]] = set()

    def expect(response: httpx.Response, status: int, slug: str) -> None:
        assert_problem(response, status, slug)
        seen.add((status, slug))

    expect(await api.post("/coupons", {"name": 1}, token=api.server.admin),
           400, "invalid-request")
    expect(await api.client.get("/users/u/coupons"), 401, "unauthorized")
    expect(await api.post("/coupons", {"name": "x"}), 403, "forbidden")
    expect(await api.assign(str(uuid.uuid4()), new_user()), 404, "book-not-found")
    expect(await api.lock(new_code(), owner), 404, "code-not-found")
    expect(await api.assign(empty["id"], new_user()), 409, "book-exhausted")
    expect(await api.assign(book["id"], owner), 409, "user-limit-reached")
    expect(await api.assign_code(code, new_user()), 409, "code-already-assigned")
    expect(await api.lock(code, new_user()), 409, "code-not-assigned")
    expect(await api.unlock(code, owner, "none"), 409, "not-locked")
    lock = (await api.lock(code, owner)).json()
    expect(await api.redeem(code, owner), 423, "code-locked")
    assert (await api.redeem(code, owner, lock["lockToken"])).status_code == 200
    expect(await api.redeem(code, owner), 423, "code-redeemed")

    assert {status for status, _ in seen} == {400, 401, 403, 404, 409, 423}
