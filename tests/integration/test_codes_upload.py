"""POST /coupons/codes: uploading named codes and generating random ones."""

from __future__ import annotations

import random
import re
import uuid
import zlib
from typing import Any

import pytest
from redis.asyncio import Redis

from .api_client import Api
from .names import ALPHABET, new_code, new_user
from .problems import assert_problem
from .redis_state import book_keys, events
from .tokens import bearer

pytestmark = pytest.mark.integration


def directory_key(code: str) -> str:
    """Where the immutable code -> book number directory keeps this code."""
    bucket = zlib.crc32(code.encode()) % 65536
    return f"cb:{{dir:{bucket >> 8:02x}}}:{bucket:04x}"


async def test_upload_adds_codes_and_sorts_out_the_refused(api: Api, redis: Redis) -> None:
    book, existing = await api.book_with_codes(2)
    other_book, [elsewhere] = await api.book_with_codes(1)
    fresh = [new_code() for _ in range(3)]
    invalid = ["has space", "bang!", "x" * 65, ""]
    sent = [*fresh, fresh[0], existing[0], elsewhere, *invalid]

    response = await api.post("/coupons/codes", {"couponBookId": book["id"], "codes": sent},
                              token=api.server.admin)

    assert response.status_code == 200, response.text
    result = response.json()
    assert result["couponBookId"] == book["id"]
    assert result["added"] == 3
    assert sorted(result["refused"]["duplicates"]) == sorted([fresh[0], existing[0]])
    assert result["refused"]["inOtherBook"] == [elsewhere]
    assert sorted(result["refused"]["invalid"]) == sorted(invalid)
    assert result["refusedCount"] == 2 + 1 + len(invalid)
    assert "codes" not in result

    keys = await book_keys(redis, book["id"])
    assert await redis.smembers(f"{keys}:free") == {*existing, *fresh}
    number = await redis.hget("cb:books", book["id"])
    for code in fresh:
        assert await redis.hget(directory_key(code), code) == number
    other_number = await redis.hget("cb:books", other_book["id"])
    assert await redis.hget(directory_key(elsewhere), elsewhere) == other_number
    counts = (await api.get(f"/coupons/{book['id']}")).json()["counts"]
    assert counts["total"] == counts["available"] == 5
    added = await events(redis, book["id"], "codes_added")
    assert [e["count"] for e in added] == ["2", "3"]


async def test_an_assigned_code_uploaded_again_is_a_duplicate(api: Api, redis: Redis) -> None:
    book, [code] = await api.book_with_codes(1)
    assert (await api.assign_code(code, new_user())).status_code == 200

    result = await api.upload(book["id"], [code])

    assert result["added"] == 0
    assert result["refused"]["duplicates"] == [code]
    assert await redis.scard(f"{await book_keys(redis, book['id'])}:free") == 0


async def test_empty_code_list_adds_nothing(api: Api) -> None:
    book = await api.create_book()

    result = await api.upload(book["id"], [])

    assert result["added"] == 0 and result["refusedCount"] == 0


async def test_generate_returns_new_codes_of_the_pattern(api: Api, redis: Redis) -> None:
    book = await api.create_book()

    response = await api.post(
        "/coupons/codes", {"couponBookId": book["id"], "generate": {"pattern": "GEN-######",
                                                                     "count": 40}},
        token=api.server.admin)

    assert response.status_code == 200, response.text
    result = response.json()
    assert result["added"] == 40 and result["refusedCount"] == 0
    assert "shortfall" not in result  # every code asked for was made
    codes = result["codes"]
    assert len(set(codes)) == 40
    assert all(re.fullmatch(f"GEN-[{ALPHABET}]{{6}}", code) for code in codes), codes
    assert await redis.smembers(f"{await book_keys(redis, book['id'])}:free") == set(codes)

    again = await api.post(
        "/coupons/codes", {"couponBookId": book["id"], "generate": {"pattern": "GEN-######",
                                                                     "count": 10}},
        token=api.server.admin)
    assert not set(again.json()["codes"]) & set(codes)
    counts = (await api.get(f"/coupons/{book['id']}")).json()["counts"]
    assert counts["total"] == counts["available"] == 50


async def test_a_pattern_with_no_unused_codes_left_is_409_and_adds_nothing(
        api: Api, redis: Redis) -> None:
    prefix = "".join(random.choices(ALPHABET, k=8))  # this test's own key space
    full, book = await api.create_book(), await api.create_book()
    every = [f"{prefix}{a}{b}" for a in ALPHABET for b in ALPHABET]
    uploaded = await api.post("/coupons/codes", {"couponBookId": full["id"], "codes": every},
                              token=api.server.admin)
    assert uploaded.json()["added"] == len(every) == 1024

    response = await api.post(
        "/coupons/codes", {"couponBookId": book["id"], "generate": {"pattern": f"{prefix}##",
                                                                     "count": 1}},
        token=api.server.admin)

    assert_problem(response, 409, "conflict")
    assert (await api.get(f"/coupons/{book['id']}")).json()["counts"]["total"] == 0
    assert await redis.scard(f"{await book_keys(redis, book['id'])}:free") == 0


async def test_generated_codes_can_be_assigned(api: Api) -> None:
    book = await api.create_book()
    generated = await api.post(
        "/coupons/codes", {"couponBookId": book["id"], "generate": {"pattern": "####-####",
                                                                     "count": 2}},
        token=api.server.admin)

    response = await api.assign_code(generated.json()["codes"][0], new_user())

    assert response.status_code == 200
    assert response.json()["couponBookId"] == book["id"]


INVALID_UPLOADS: list[Any] = [
    pytest.param({"codes": ["A1"], "generate": {"pattern": "####", "count": 1}}, "codes",
                 id="both"),
    pytest.param({}, "codes", id="neither"),
    pytest.param({"generate": {"pattern": "AB#", "count": 5}}, "generate.pattern",
                 id="keyspace-too-small"),
    pytest.param({"generate": {"pattern": "ABC", "count": 1}}, "generate.pattern",
                 id="no-placeholder"),
    pytest.param({"generate": {"pattern": "#####", "count": 0}}, "generate.count",
                 id="count-zero"),
    pytest.param({"generate": {"pattern": "#####", "count": "3"}}, "generate.count",
                 id="count-wrong-type"),
    pytest.param({"codes": "A1,A2"}, "codes", id="codes-not-a-list"),
    pytest.param({"codes": [], "extra": True}, "extra", id="unknown-field"),
]


@pytest.mark.parametrize(("body", "field"), INVALID_UPLOADS)
async def test_invalid_upload_is_400_naming_the_field(
        api: Api, redis: Redis, body: dict[str, Any], field: str) -> None:
    book = await api.create_book()

    response = await api.post("/coupons/codes", {"couponBookId": book["id"], **body},
                              token=api.server.admin)

    problem = assert_problem(response, 400, "invalid-request")
    assert problem.get("field") == field, problem
    assert await redis.scard(f"{await book_keys(redis, book['id'])}:free") == 0


async def test_book_id_must_be_a_uuid(api: Api) -> None:
    response = await api.post("/coupons/codes", {"couponBookId": "book-1", "codes": ["A1"]},
                              token=api.server.admin)

    problem = assert_problem(response, 400, "invalid-request")
    assert problem.get("field") == "couponBookId"


@pytest.mark.parametrize("body", [{"codes": ["UNKNOWNBOOK1"]},
                                  {"generate": {"pattern": "#####", "count": 1}}],
                         ids=["codes", "generate"])
async def test_unknown_book_is_404(api: Api, redis: Redis, body: dict[str, Any]) -> None:
    response = await api.post("/coupons/codes", {"couponBookId": str(uuid.uuid4()), **body},
                              token=api.server.admin)

    assert_problem(response, 404, "book-not-found")
    assert await redis.hget(directory_key("UNKNOWNBOOK1"), "UNKNOWNBOOK1") is None


async def test_body_over_the_limit_is_413_and_adds_nothing(api: Api, redis: Redis) -> None:
    book = await api.create_book()
    codes = [f"{new_code()}{'X' * 40}" for _ in range(20_000)]  # about 1.2 MB of JSON

    response = await api.post("/coupons/codes", {"couponBookId": book["id"], "codes": codes},
                              token=api.server.admin)

    problem = assert_problem(response, 413, "payload-too-large")
    assert "1048576" in problem["detail"]
    assert await redis.scard(f"{await book_keys(redis, book['id'])}:free") == 0


async def test_body_under_the_limit_but_over_64_kib_is_accepted(api: Api) -> None:
    book = await api.create_book()
    codes = [f"{new_code()}{'Y' * 40}" for _ in range(2_000)]  # about 120 kB of JSON

    result = await api.upload(book["id"], codes)

    assert result["added"] == 2_000


@pytest.mark.parametrize("who", ["writer", "end-user"])
async def test_upload_needs_admin(api: Api, redis: Redis, who: str) -> None:
    book = await api.create_book()
    before = (await api.get(f"/coupons/{book['id']}")).json()
    token = api.server.writer if who == "writer" else api.server.user(new_user())
    code = new_code()

    response = await api.client.post(
        "/coupons/codes", json={"couponBookId": book["id"], "codes": [code]},
        headers=bearer(token))

    assert_problem(response, 403, "forbidden")
    assert (await api.get(f"/coupons/{book['id']}")).json() == before
    assert before["counts"]["total"] == 0
    assert await redis.hget(directory_key(code), code) is None
    assert await events(redis, book["id"], "codes_added") == []
