"""GET /users/{userId}/coupons: a user's codes, a page at a time (RFC 8288 Link)."""

from __future__ import annotations

import base64
import re
import uuid
from typing import Any

import httpx
import pytest

from .api_client import Api
from .names import new_user
from .problems import assert_problem
from .tokens import bearer

pytestmark = pytest.mark.integration

NEXT_LINK = re.compile(r'^<([^>]+)>;\s*rel="next"$')


def next_url(response: httpx.Response) -> str | None:
    link = response.headers.get("link")
    if link is None:
        return None
    match = NEXT_LINK.match(link)
    assert match, link
    return match.group(1)


async def give(api: Api, user: str, books: list[int]) -> tuple[list[dict[str, Any]], set[str]]:
    """New books holding the given numbers of codes, all assigned to `user`."""
    made, codes = [], set()
    for count in books:
        book, book_codes = await api.book_with_codes(count)
        for code in book_codes:
            assert (await api.assign_code(code, user)).status_code == 200
        made.append(book)
        codes.update(book_codes)
    return made, codes


async def test_a_user_without_codes_gets_an_empty_list(api: Api) -> None:
    response = await api.get(f"/users/{new_user()}/coupons")

    assert response.status_code == 200
    assert response.json() == []
    assert "link" not in response.headers


async def test_lists_every_code_with_its_state(api: Api) -> None:
    user = new_user()
    [book], codes = await give(api, user, [3])
    locked, redeemed, plain = sorted(codes)
    assert (await api.lock(locked, user)).status_code == 200
    assert (await api.redeem(redeemed, user)).status_code == 200

    response = await api.get(f"/users/{user}/coupons")

    assert response.status_code == 200
    assert "link" not in response.headers
    listed = response.json()
    assert [c["code"] for c in listed] == [locked, redeemed, plain]
    assert {c["couponBookId"] for c in listed} == {book["id"]}
    assert {c["assignedTo"] for c in listed} == {user}
    assert [(c["status"], c["locked"], c["timesRedeemed"]) for c in listed] == [
        ("locked", True, 0), ("redeemed", False, 1), ("assigned", False, 0)]


async def test_pages_follow_the_link_header_until_there_is_none(api: Api) -> None:
    user = new_user()
    _, codes = await give(api, user, [3, 1, 4])
    seen: list[str] = []
    pages: list[int] = []
    url: str | None = f"/users/{user}/coupons?limit=2"

    while url is not None:
        response = await api.get(url)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(len(page))
        seen.extend(c["code"] for c in page)
        url = next_url(response)
        if url is not None:
            assert url.startswith(f"/users/{user}/coupons?")  # relative to the request
            assert "limit=2" in url and "cursor=" in url

    assert pages == [2, 2, 2, 2]
    assert sorted(seen) == sorted(codes)
    assert len(seen) == len(set(seen)) == 8


async def test_the_link_does_not_take_the_host_from_the_request(api: Api) -> None:
    user = new_user()
    await give(api, user, [2])

    response = await api.client.get(f"/users/{user}/coupons?limit=1",
                                    headers={**bearer(api.server.admin),
                                             "Host": "evil.example"})

    assert response.status_code == 200, response.text
    assert "evil.example" not in response.headers["link"]
    assert (next_url(response) or "").startswith(f"/users/{user}/coupons?")


async def test_a_page_exactly_as_long_as_the_list_has_no_link(api: Api) -> None:
    user = new_user()
    await give(api, user, [3])

    response = await api.get(f"/users/{user}/coupons", params={"limit": 3})

    assert len(response.json()) == 3
    assert "link" not in response.headers


async def test_filter_by_book_and_page_within_it(api: Api) -> None:
    user = new_user()
    books, _ = await give(api, user, [2, 5])
    wanted = books[1]["id"]
    seen: list[str] = []
    response = await api.get(f"/users/{user}/coupons",
                             params={"couponBookId": wanted, "limit": 2})
    while True:
        assert response.status_code == 200
        seen.extend(c["code"] for c in response.json())
        assert {c["couponBookId"] for c in response.json()} == {wanted}
        url = next_url(response)
        if url is None:
            break
        assert f"couponBookId={wanted}" in url
        response = await api.get(url)

    assert len(seen) == len(set(seen)) == 5


async def test_listing_another_book_of_the_user_shows_nothing_of_this_one(api: Api) -> None:
    user = new_user()
    await give(api, user, [2])
    empty = await api.create_book()

    response = await api.get(f"/users/{user}/coupons", params={"couponBookId": empty["id"]})

    assert response.status_code == 200
    assert response.json() == []


@pytest.mark.parametrize("twice", ["limit=1&limit=500", "cursor={cursor}&cursor={cursor}",
                                   "couponBookId={book}&couponBookId={book}"])
async def test_a_query_parameter_given_twice_is_400(api: Api, twice: str) -> None:
    """Even with the same value twice (each alone would be served)."""
    user = new_user()
    books, _ = await give(api, user, [2])
    first_page = await api.get(f"/users/{user}/coupons?limit=1")
    cursor = re.search(r"cursor=([^&>]+)", first_page.headers["link"])
    assert cursor is not None
    query = twice.format(book=books[0]["id"], cursor=cursor.group(1))

    response = await api.get(f"/users/{user}/coupons?{query}")

    problem = assert_problem(response, 400, "invalid-request")
    assert problem["field"] == query.split("=")[0]


# 4301 digits: int() refuses to read them (a 500 before they were checked by length).
@pytest.mark.parametrize("limit", ["0", "501", "-1", "ten", "2.5", "", "1" * 4301, "0" * 4301])
async def test_limit_out_of_range_is_400(api: Api, limit: str) -> None:
    response = await api.get(f"/users/{new_user()}/coupons", params={"limit": limit})

    problem = assert_problem(response, 400, "invalid-request")
    assert problem.get("field") == "limit"


async def test_a_superscript_digit_as_limit_is_400(api: Api) -> None:
    response = await api.get(f"/users/{new_user()}/coupons", params={"limit": "²"})

    problem = assert_problem(response, 400, "invalid-request")
    assert problem.get("field") == "limit"


@pytest.mark.parametrize("limit", ["1", "500"])
async def test_limit_bounds_are_accepted(api: Api, limit: str) -> None:
    response = await api.get(f"/users/{new_user()}/coupons", params={"limit": limit})

    assert response.status_code == 200


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "!!!", "abc", "bm90LWEtbnVtYmVy", "", "MjE6",  # "21:": no code
    b64("21:bad code"), b64("-1:A"), b64(" 21:A"), b64("\u0662\u0661:A"), b64("21"),
    b64("21:A") + "==",
])
async def test_a_cursor_the_service_did_not_issue_is_400(api: Api, cursor: str) -> None:
    response = await api.get(f"/users/{new_user()}/coupons", params={"cursor": cursor})

    problem = assert_problem(response, 400, "invalid-request")
    assert problem.get("field") == "cursor"


async def test_only_the_issued_spelling_of_a_cursor_is_accepted(api: Api) -> None:
    user = new_user()
    await give(api, user, [3])
    first = await api.get(f"/users/{user}/coupons", params={"limit": 1})
    url = next_url(first)
    assert url is not None
    issued = httpx.URL(url).params["cursor"]
    number, code = base64.urlsafe_b64decode(issued + "==").decode().split(":")
    # What base64 and int() forgive, each naming the same place in the list.
    spellings = [issued + "=" * (-len(issued) % 4 or 4), b64(f"0{number}:{code}"),
                 b64(f" {number}:{code}"), b64(f"+{number}:{code}")]

    for cursor in spellings:
        response = await api.get(f"/users/{user}/coupons", params={"cursor": cursor})
        problem = assert_problem(response, 400, "invalid-request")
        assert problem.get("field") == "cursor", cursor
    response = await api.get(f"/users/{user}/coupons", params={"cursor": issued})
    assert response.status_code == 200, response.text
    assert [c["code"] for c in response.json()] == [
        c["code"] for c in (await api.get(f"/users/{user}/coupons")).json()[1:]]


async def test_unknown_book_filter_is_404(api: Api) -> None:
    response = await api.get(f"/users/{new_user()}/coupons",
                             params={"couponBookId": str(uuid.uuid4())})

    assert_problem(response, 404, "book-not-found")


async def test_book_filter_that_is_not_a_uuid_is_400(api: Api) -> None:
    response = await api.get(f"/users/{new_user()}/coupons", params={"couponBookId": "book-1"})

    problem = assert_problem(response, 400, "invalid-request")
    assert problem.get("field") == "couponBookId"


async def test_user_id_with_forbidden_characters_is_400(api: Api) -> None:
    response = await api.get("/users/bad%20user/coupons")

    problem = assert_problem(response, 400, "invalid-request")
    assert problem.get("field") == "userId"


async def test_end_user_lists_only_its_own_codes(api: Api) -> None:
    me, someone = new_user(), new_user()
    _, codes = await give(api, me, [2])

    mine = await api.get(f"/users/{me}/coupons", token=api.server.user(me))
    theirs = await api.get(f"/users/{someone}/coupons", token=api.server.user(me))

    assert mine.status_code == 200
    assert {c["code"] for c in mine.json()} == codes
    assert_problem(theirs, 403, "forbidden")


async def test_a_back_end_may_list_any_user(api: Api) -> None:
    user = new_user()
    _, codes = await give(api, user, [1])

    response = await api.get(f"/users/{user}/coupons", token=api.server.writer)

    assert {c["code"] for c in response.json()} == codes
