"""The request edges the hot path reads without Starlette's helpers: headers,
the body as ASGI messages, and the JSON response's headers."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from starlette.requests import ClientDisconnect, Request

from couponsvc import schemas
from couponsvc.errors import InvalidRequest, PayloadTooLarge
from couponsvc.http import decode, header, json_response, read_body


def request(headers: list[tuple[bytes, bytes]], messages: list[dict[str, Any]]) -> Request:
    pending = list(messages)

    async def receive() -> dict[str, Any]:
        return pending.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    return Request(scope, receive)


def test_a_header_is_found_by_name_and_of_two_the_first_counts() -> None:
    req = request([(b"authorization", b"Bearer one"), (b"x-other", b"1"),
                   (b"x-other", b"2")], [])
    assert header(req, b"authorization") == "Bearer one"
    assert header(req, b"x-other") == "1"
    assert header(req, b"idempotency-key") is None


@pytest.mark.parametrize("name", [b"authorization", b"content-type", b"idempotency-key"])
def test_a_header_that_decides_the_request_may_not_come_twice(name: bytes) -> None:
    req = request([(name, b"one"), (b"x-other", b"1"), (name, b"two")], [])
    with pytest.raises(InvalidRequest) as caught:
        header(req, b"x-other")  # any look-up indexes them all
    assert caught.value.extra.get("field") == name.decode().title()


async def test_a_body_in_one_message_or_in_several_reads_whole() -> None:
    one = request([], [{"type": "http.request", "body": b'{"a": 1}'}])
    assert await read_body(one) == b'{"a": 1}'
    chunked = request([], [{"type": "http.request", "body": b'{"a"', "more_body": True},
                           {"type": "http.request", "body": b"", "more_body": True},
                           {"type": "http.request", "body": b": 1}"}])
    assert await read_body(chunked) == b'{"a": 1}'


async def test_a_body_past_the_limit_is_refused_declared_or_not() -> None:
    declared = request([(b"content-length", b"11")], [])
    with pytest.raises(PayloadTooLarge):
        await read_body(declared, limit=10)
    streamed = request([], [{"type": "http.request", "body": b"x" * 6, "more_body": True},
                            {"type": "http.request", "body": b"x" * 6}])
    with pytest.raises(PayloadTooLarge):
        await read_body(streamed, limit=10)


async def test_a_client_gone_mid_body_is_a_disconnect() -> None:
    gone = request([], [{"type": "http.request", "body": b"{", "more_body": True},
                        {"type": "http.disconnect"}])
    with pytest.raises(ClientDisconnect):
        await read_body(gone)


def test_a_json_response_carries_its_length_type_and_extra_headers() -> None:
    response = json_response({"ok": True}, 201, {"Location": "/coupons/1"})
    assert response.status_code == 201
    assert response.body == b'{"ok":true}'
    assert response.raw_headers == [(b"content-length", b"11"),
                                    (b"content-type", b"application/json"),
                                    (b"location", b"/coupons/1")]


BOOK = "0b9e2f8e-8a37-4a5e-9d0b-0e6a2d9c1f11"


@pytest.mark.parametrize(("kind", "body", "field"), [
    (schemas.AssignRandom, {"couponBookId": BOOK, "userId": "alice\n"}, "userId"),
    (schemas.AssignRandom, {"couponBookId": BOOK + "\n", "userId": "alice"}, "couponBookId"),
    (schemas.CreateBook, {"name": "spring\n"}, "name"),
    (schemas.CreateBook, {"name": "spring", "initialCouponAmount": 2,
                          "codePattern": "Q#########\n"}, "codePattern"),
    (schemas.UploadCodes, {"couponBookId": BOOK,
                           "generate": {"pattern": "Q##########\n", "count": 2}},
     "generate.pattern"),
])
def test_a_value_with_a_trailing_newline_is_refused(kind: type, body: dict[str, Any],
                                                     field: str) -> None:
    """msgspec matches a pattern with re.search, where `$` also matches
    before a final newline: "alice\n" was taken as a user id (whose codes
    the listing route then refused to show), and a code pattern ending in
    one made codes that broke the COPY into Postgres (a 500)."""
    with pytest.raises(InvalidRequest) as refused:
        decode(msgspec.json.encode(body), kind)

    assert refused.value.extra["field"] == field


def test_the_same_values_without_the_newline_are_taken() -> None:
    assert decode(msgspec.json.encode({"couponBookId": BOOK, "userId": "alice"}),
                  schemas.AssignRandom).userId == "alice"
    assert decode(msgspec.json.encode({"name": "spring", "description": "two\nlines\n"}),
                  schemas.CreateBook).description == "two\nlines\n"
