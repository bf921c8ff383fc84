"""POST /coupons and GET /coupons/{id}: creating books and reading their live counts."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from couponsvc import http
from couponsvc.keys import Keys
from couponsvc.schemas import CreateBook

from .api_client import Api
from .names import ALPHABET, new_code, new_user
from .problems import assert_problem
from .redis_state import book_keys, events
from .tokens import bearer

pytestmark = pytest.mark.integration


async def test_create_book_answers_201_with_location_and_every_field(
        api: Api, redis: Redis) -> None:
    body = {"name": "Summer sale", "description": "10% off", "multipleRedeemsAllowed": True,
            "maxRedeemsPerCode": 3, "maxPerUser": 2, "lockTtlSeconds": 90}

    response = await api.post("/coupons", body, token=api.server.admin)

    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    book = response.json()
    assert response.headers["location"] == f"/coupons/{book['id']}"
    assert uuid.UUID(book["id"]).version == 4
    assert {k: book[k] for k in body} == body
    assert book["counts"] == {"total": 0, "available": 0, "assigned": 0, "locked": 0,
                              "redeemed": 0}
    created = datetime.fromisoformat(book["createdAt"])
    assert abs(created - datetime.now(UTC)) < timedelta(minutes=1)
    assert book["updatedAt"] == book["createdAt"]
    assert "validFrom" not in book and "validUntil" not in book

    keys = await book_keys(redis, book["id"])
    meta = await redis.hgetall(f"{keys}:meta")
    assert meta["id"] == book["id"]
    assert meta["name"] == "Summer sale"
    assert meta["lockTtlMs"] == "90000"
    assert meta["maxPerUser"] == "2"
    assert [e["type"] for e in await events(redis, book["id"])] == ["book_created"]


async def test_location_header_leads_to_the_same_book(api: Api) -> None:
    created = await api.post("/coupons", {"name": "located"}, token=api.server.admin)

    fetched = await api.get(created.headers["location"])

    assert fetched.status_code == 200
    assert fetched.json() == created.json()


async def test_create_book_defaults(api: Api) -> None:
    book = await api.create_book()

    assert book["description"] == ""
    assert book["multipleRedeemsAllowed"] is False
    assert book["lockTtlSeconds"] == 300
    assert "maxPerUser" not in book and "maxRedeemsPerCode" not in book


async def test_validity_window_is_kept_as_an_instant(api: Api) -> None:
    start = datetime(2031, 1, 1, 12, 0, tzinfo=UTC)
    body = {"validFrom": "2031-01-01T14:00:00+02:00", "validUntil": "2031-02-01T00:00:00Z"}

    book = await api.create_book(**body)

    assert datetime.fromisoformat(book["validFrom"]) == start
    assert datetime.fromisoformat(book["validUntil"]) == datetime(2031, 2, 1, tzinfo=UTC)


async def test_initial_amount_with_pattern_generates_codes(api: Api, redis: Redis) -> None:
    book = await api.create_book(initialCouponAmount=25, codePattern="SALE-####-##")

    assert book["counts"]["total"] == 25
    assert book["counts"]["available"] == 25
    free = await redis.smembers(f"{await book_keys(redis, book['id'])}:free")
    assert len(free) == 25
    shape = re.compile(f"SALE-[{ALPHABET}]{{4}}-[{ALPHABET}]{{2}}")
    assert all(shape.fullmatch(code) for code in free), free


async def test_initial_amount_without_pattern_uses_twelve_random_characters(
        api: Api, redis: Redis) -> None:
    book = await api.create_book(initialCouponAmount=5)

    free = await redis.smembers(f"{await book_keys(redis, book['id'])}:free")
    assert len(free) == 5
    assert all(re.fullmatch(f"[{ALPHABET}]{{12}}", code) for code in free), free


def _later(hours: int) -> str:
    return (datetime.now(UTC).replace(microsecond=0) + timedelta(hours=hours)).isoformat()


INVALID_BOOKS: list[Any] = [
    pytest.param({"name": 42}, "name", id="wrong-type-name"),
    pytest.param({"name": "x", "multipleRedeemsAllowed": "yes"}, "multipleRedeemsAllowed",
                 id="wrong-type-bool"),
    pytest.param({"name": "x", "maxPerUser": 0}, "maxPerUser", id="max-per-user-zero"),
    pytest.param({"name": "x", "lockTtlSeconds": 86_401}, "lockTtlSeconds", id="ttl-too-long"),
    pytest.param({"name": ""}, "name", id="empty-name"),
    pytest.param({"name": "x", "colour": "red"}, "colour", id="unknown-field"),
    pytest.param({"description": "no name"}, "name", id="missing-name"),
    pytest.param({"name": "x", "maxRedeemsPerCode": 3}, "maxRedeemsPerCode",
                 id="max-redeems-without-multiple"),
    pytest.param({"name": "x", "validFrom": _later(2), "validUntil": _later(1)}, "validUntil",
                 id="from-after-until"),
    pytest.param({"name": "x", "validFrom": _later(1), "validUntil": _later(1)}, "validUntil",
                 id="from-equals-until"),
    pytest.param({"name": "x", "validFrom": "2031-01-01T00:00:00"}, "validFrom",
                 id="naive-datetime"),
    pytest.param({"name": "x", "validUntil": "next tuesday"}, "validUntil", id="not-a-datetime"),
    pytest.param({"name": "x", "initialCouponAmount": 1000, "codePattern": "AB##"},
                 "codePattern", id="pattern-keyspace-too-small"),
    pytest.param({"name": "x", "initialCouponAmount": 5, "codePattern": "NOHASH"},
                 "codePattern", id="pattern-without-placeholder"),
    pytest.param({"name": "x", "codePattern": "bad pattern!"}, "codePattern",
                 id="pattern-bad-characters"),
    pytest.param({"name": "x", "codePattern": "GOOD-####"}, "codePattern",
                 id="pattern-without-amount"),
    pytest.param({"name": "x", "codePattern": "GOOD-####", "initialCouponAmount": 0},
                 "codePattern", id="pattern-with-zero-amount"),
    pytest.param({"name": "x", "initialCouponAmount": -1}, "initialCouponAmount",
                 id="negative-amount"),
    # Postgres text refuses NUL: it must be a 400 here, not a 500 there.
    pytest.param({"name": "a\u0000b"}, "name", id="nul-in-name"),
    pytest.param({"name": "two\nlines"}, "name", id="line-break-in-name"),
    # Python's `$` also matches before a final line break (these were a 201,
    # and a 500 for the pattern: its codes broke the COPY into Postgres).
    pytest.param({"name": "x\n"}, "name", id="line-break-ending-name"),
    pytest.param({"name": "x", "initialCouponAmount": 2, "codePattern": "Q#########\n"},
                 "codePattern", id="line-break-ending-pattern"),
    pytest.param({"name": "x", "description": "a\u0000b"}, "description",
                 id="nul-in-description"),
    pytest.param({"name": "x", "description": "bell\u0007"}, "description",
                 id="control-character-in-description"),
    # Outside what both stores hold exactly (epoch ms in Redis, timestamptz in
    # Postgres, datetime in Python once converted to UTC).
    pytest.param({"name": "x", "validFrom": "0001-01-01T00:00:00Z"}, "validFrom",
                 id="valid-from-year-1"),
    pytest.param({"name": "x", "validFrom": "0001-01-01T00:00:00+14:00"}, "validFrom",
                 id="valid-from-before-year-1-in-utc"),
    pytest.param({"name": "x", "validFrom": "1969-12-31T23:59:59Z"}, "validFrom",
                 id="valid-from-before-1970"),
    pytest.param({"name": "x", "validUntil": "9999-12-31T23:59:59-14:00"}, "validUntil",
                 id="valid-until-past-year-9999-in-utc"),
]


async def test_free_text_keeps_unicode_tabs_and_line_breaks(api: Api) -> None:
    body = {"name": "Été — 夏のセール 🎉", "description": "line one\n\tline two\r\n",
            "validFrom": "1970-01-01T00:00:00Z", "validUntil": "9998-12-31T23:59:59Z"}

    response = await api.post("/coupons", body, token=api.server.admin)

    assert response.status_code == 201, response.text
    book = response.json()
    assert (book["name"], book["description"]) == (body["name"], body["description"])
    assert (book["validFrom"], book["validUntil"]) == ("1970-01-01T00:00:00Z",
                                                       "9998-12-31T23:59:59Z")


@pytest.mark.parametrize(("body", "field"), INVALID_BOOKS)
async def test_invalid_book_is_400_naming_the_field(
        api: Api, redis: Redis, body: dict[str, Any], field: str) -> None:
    books_before = await redis.hlen("cb:books")

    response = await api.post("/coupons", body, token=api.server.admin)

    problem = assert_problem(response, 400, "invalid-request")
    assert problem.get("field") == field, problem
    assert await redis.hlen("cb:books") == books_before


async def test_non_json_content_type_is_415(api: Api) -> None:
    response = await api.client.post(
        "/coupons", content=b'{"name": "x"}',
        headers={**bearer(api.server.admin), "Content-Type": "text/plain"})

    assert_problem(response, 415, "unsupported-media-type")


@pytest.mark.parametrize(("raw", "says"), [
    (b'{"name": "x"', "truncated"),
    (b"{'name': 'x'}", "malformed"),
    (b"", "truncated"),
    (b"\xff\xfe", "malformed"),
    # Not UTF-8 inside a string (msgspec raises UnicodeDecodeError, not DecodeError).
    (b'{"name": "caf\xe9"}', "not UTF-8"),
    (b'{"lockTtlSeconds": 60.0, "name": "\xed\xa0\x80"}', "not UTF-8"),
    (b'{"name": "\\ud800"}', "unpaired"),
    (b'{"name": "\\uDBFFx"}', "unpaired"),
])
async def test_malformed_json_is_400(api: Api, raw: bytes, says: str) -> None:
    response = await api.client.post(
        "/coupons", content=raw,
        headers={**bearer(api.server.admin), "Content-Type": "application/json"})

    problem = assert_problem(response, 400, "invalid-request")
    assert "not valid JSON" in problem["detail"] and says in problem["detail"], problem


async def test_get_book_reports_live_counts(api: Api) -> None:
    book, codes = await api.book_with_codes(4)
    holder = new_user()
    for code in codes[:3]:
        assert (await api.assign_code(code, holder)).status_code == 200
    lock = await api.lock(codes[0], holder)
    assert lock.status_code == 200
    assert (await api.redeem(codes[1], holder)).status_code == 200

    response = await api.get(f"/coupons/{book['id']}")

    assert response.status_code == 200
    fetched = response.json()
    assert fetched["counts"] == {"total": 4, "available": 1, "assigned": 3, "locked": 1,
                                 "redeemed": 1}
    assert fetched["updatedAt"] > book["updatedAt"]


async def test_unknown_book_is_404(api: Api) -> None:
    response = await api.get(f"/coupons/{uuid.uuid4()}")

    assert_problem(response, 404, "book-not-found")


async def test_book_id_that_is_not_a_uuid_is_404(api: Api) -> None:
    response = await api.get("/coupons/not-a-book")

    # No route takes it: a book id is a UUID (so GET /coupons/codes is a 405).
    assert_problem(response, 404, "not-found")


async def test_a_book_id_in_upper_case_is_the_same_book(api: Api) -> None:
    book = await api.create_book()

    response = await api.get(f"/coupons/{book['id'].upper()}")

    assert response.status_code == 200, response.text
    assert response.json()["id"] == book["id"]


async def test_an_upper_case_book_id_is_the_same_book_in_bodies_and_queries(api: Api) -> None:
    """UUIDs are case-insensitive: what a path takes, a body and a query take
    too, and answers give the id in lower case."""
    book = await api.create_book()
    upper = book["id"].upper()
    codes = [new_code() for _ in range(3)]
    user, key = new_user(), f"upper-{uuid.uuid4()}"

    uploaded = await api.upload(upper, [codes[0], codes[2]])
    text = await api.client.post("/coupons/codes", params={"couponBookId": upper},
                                 content=codes[1] + "\n", headers={
                                     "content-type": "text/plain", **bearer(api.server.admin)})
    named = await api.post(f"/coupons/assign/{codes[2]}", {"userId": user, "couponBookId": upper})
    assigned = await api.assign(upper, user, headers={"Idempotency-Key": key})
    again = await api.assign(book["id"], user, headers={"Idempotency-Key": key})
    listed = await api.get(f"/users/{user}/coupons", token=api.server.writer,
                           params={"couponBookId": upper})

    assert (uploaded["couponBookId"], uploaded["added"]) == (book["id"], 2)
    assert text.status_code == 200, text.text
    assert (text.json()["couponBookId"], text.json()["added"]) == (book["id"], 1)
    assert assigned.status_code == 200, assigned.text
    assert assigned.json()["couponBookId"] == book["id"]
    # The same request, however the id was spelled: a replay, not a reuse.
    assert (again.status_code, again.headers.get("idempotent-replayed")) == (200, "true")
    assert again.json() == assigned.json()
    assert named.status_code == 200, named.text
    assert listed.status_code == 200, listed.text
    assert sorted(c["code"] for c in listed.json()) == \
        sorted([assigned.json()["code"], codes[2]])


@pytest.mark.parametrize("who", ["writer", "end-user"])
async def test_reading_a_book_needs_admin(api: Api, who: str) -> None:
    book = await api.create_book()
    token = api.server.writer if who == "writer" else api.server.user(new_user())

    response = await api.get(f"/coupons/{book['id']}", token=token)

    assert_problem(response, 403, "forbidden")


# --- Idempotency-Key on POST /coupons -----------------------------------------

# Keys are the caller's: every request of one test comes from one admin.
MAKER = "book-maker"


async def test_a_create_retried_with_its_key_gets_the_same_book(api: Api, redis: Redis) -> None:
    """A create whose answer was lost can be sent again without making a
    second book: there is no list of books to find the first one in."""
    maker = api.server.token(MAKER, "coupons:admin coupons:write")
    headers = {"Idempotency-Key": f"book-{uuid.uuid4()}"}
    body = {"name": "Retried", "initialCouponAmount": 3}
    books_before = await redis.hlen("cb:books")

    first = await api.post("/coupons", body, token=maker, headers=headers)
    retry = await api.post("/coupons", body, token=maker, headers=headers)

    assert first.status_code == retry.status_code == 201, (first.text, retry.text)
    assert "idempotent-replayed" not in first.headers
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.headers["location"] == first.headers["location"]
    assert retry.json()["id"] == first.json()["id"]
    assert retry.json()["counts"]["total"] == 3
    assert await redis.hlen("cb:books") == books_before + 1
    assert [e["type"] for e in await events(redis, first.json()["id"])].count(
        "book_created") == 1


async def test_a_create_key_reused_with_another_body_is_409(api: Api, redis: Redis) -> None:
    maker = api.server.token(MAKER, "coupons:admin coupons:write")
    headers = {"Idempotency-Key": f"book-{uuid.uuid4()}"}
    made = await api.post("/coupons", {"name": "One"}, token=maker, headers=headers)
    assert made.status_code == 201, made.text
    books_before = await redis.hlen("cb:books")

    other = await api.post("/coupons", {"name": "Two"}, token=maker, headers=headers)

    assert_problem(other, 409, "idempotency-key-reused")
    assert await redis.hlen("cb:books") == books_before


async def test_concurrent_creates_with_one_key_make_one_book(api: Api, redis: Redis) -> None:
    """Ten at once: one makes the book; each other one gets that book or, while
    it is being made, 409 in-progress with Retry-After. Never a second book,
    nor a second batch of its initial codes."""
    maker = api.server.token(MAKER, "coupons:admin coupons:write")
    headers = {"Idempotency-Key": f"book-{uuid.uuid4()}"}
    initial = 200
    body = {"name": "Raced", "initialCouponAmount": initial}
    books_before = await redis.hlen("cb:books")

    answers = await asyncio.gather(*(
        api.post("/coupons", body, token=maker, headers=headers)
        for _ in range(10)))

    made = [a for a in answers if a.status_code == 201]
    assert made, [a.text for a in answers]
    assert len({a.json()["id"] for a in made}) == 1
    assert sum("idempotent-replayed" not in a.headers for a in made) <= 1
    for waiting in (a for a in answers if a.status_code != 201):
        assert_problem(waiting, 409, "idempotency-key-in-progress")
        assert waiting.headers["retry-after"] == "1"
    assert await redis.hlen("cb:books") == books_before + 1
    book_id = made[0].json()["id"]
    assert {a.json()["counts"]["total"] for a in made} == {initial}
    counts = (await api.get(f"/coupons/{book_id}")).json()["counts"]
    assert (counts["total"], counts["available"]) == (initial, initial)
    assert await redis.scard(f"{await book_keys(redis, book_id)}:free") == initial
    assert len(await events(redis, book_id, "book_created")) == 1


async def test_a_create_still_in_progress_is_409_with_retry_after(
        api: Api, redis: Redis) -> None:
    """What a retry sees while the first request is still making its book."""
    maker = api.server.token(MAKER, "coupons:admin coupons:write")
    key = f"book-{uuid.uuid4()}"
    body = {"name": "Slow"}
    fingerprint = http.fingerprint("POST", "/coupons", msgspec.convert(body, CreateBook))
    await redis.set(Keys("cb").idempotency_claim(MAKER, key),
                    f"{fingerprint} {uuid.uuid4()}", px=60_000)
    await redis.set(Keys("cb").idempotency_lease(MAKER, key), "the-first's-token", px=60_000)
    books_before = await redis.hlen("cb:books")

    response = await api.post("/coupons", body, token=maker,
                              headers={"Idempotency-Key": key})

    problem = assert_problem(response, 409, "idempotency-key-in-progress")
    assert response.headers["retry-after"] == "1"
    assert problem["retryAfterSeconds"] == 1
    assert await redis.hlen("cb:books") == books_before


async def test_the_retry_of_a_create_that_died_makes_the_book_its_key_names(
        api: Api, redis: Redis) -> None:
    """The first request chose the id and died (its lease lapsed): the retry
    makes that book, and answers as a first answer (not a replay)."""
    maker = api.server.token(MAKER, "coupons:admin coupons:write")
    key, chosen = f"book-{uuid.uuid4()}", str(uuid.uuid4())
    body = {"name": "Died", "initialCouponAmount": 3}
    fingerprint = http.fingerprint("POST", "/coupons", msgspec.convert(body, CreateBook))
    await redis.set(Keys("cb").idempotency_claim(MAKER, key), f"{fingerprint} {chosen}",
                    px=60_000)

    response = await api.post("/coupons", body, token=maker,
                              headers={"Idempotency-Key": key})

    assert response.status_code == 201, response.text
    assert "idempotent-replayed" not in response.headers
    assert (response.json()["id"], response.json()["counts"]["total"]) == (chosen, 3)
    assert response.headers["location"] == f"/coupons/{chosen}"
    assert await redis.get(Keys("cb").idempotency_claim(MAKER, key)) == \
        f"{fingerprint} {chosen} made"
