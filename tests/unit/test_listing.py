"""list_user_codes through Coupons.list_for_user: order, pages, filters, rights."""

from __future__ import annotations

import base64

import pytest

from couponsvc import errors
from couponsvc.coupons import decode_cursor, encode_cursor

pytestmark = pytest.mark.unit

# Book 1 and book 2 each hold codes of bob (in code order below) and one of carol's.
BOB_1 = ["A-1", "A-2", "B_3", "a4", "z9"]
BOB_2 = ["0X", "K-7", "Q"]


@pytest.fixture
async def two_books(make_book, coupons, writer):
    first = await make_book([*BOB_1, "CAROL1"])
    second = await make_book([*BOB_2, "CAROL2"])
    # Assigned out of order, across books, to show the listing sorts.
    for code in ("z9", "Q", "A-2", "a4", "0X", "B_3", "K-7", "A-1"):
        await coupons.assign_code(writer, code, "bob", None, None)
    await coupons.assign_code(writer, "CAROL1", "carol", None, None)
    await coupons.assign_code(writer, "CAROL2", "carol", None, None)
    return first, second


async def all_pages(coupons, principal, user, book_id, limit):
    codes, cursor, pages = [], None, 0
    while True:
        page = await coupons.list_for_user(principal, user, book_id, limit, cursor)
        pages += 1
        assert len(page.coupons) <= limit
        codes += [(c.couponBookId, c.code) for c in page.coupons]
        if page.next_cursor is None:
            return codes, pages
        assert page.coupons, "a page with a next cursor is never empty"
        cursor = page.next_cursor


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 8, 100])
async def test_pages_list_every_code_once_in_order(two_books, coupons, writer, limit):
    first, second = two_books

    codes, pages = await all_pages(coupons, writer, "bob", None, limit)

    assert codes == [(first.id, c) for c in BOB_1] + [(second.id, c) for c in BOB_2]
    assert pages == -(-len(codes) // limit)


async def test_filter_by_book(two_books, coupons, writer):
    _, second = two_books

    codes, _ = await all_pages(coupons, writer, "bob", second.id, 2)

    assert codes == [(second.id, c) for c in BOB_2]


async def test_listing_shows_each_code_state(two_books, coupons, writer):
    lock, _ = await coupons.lock(writer, "A-2", "bob", None)
    await coupons.redeem(writer, "B_3", "bob", None, None)

    page = await coupons.list_for_user(writer, "bob", None, 3, None)

    a1, a2, b3 = page.coupons
    assert (a1.status, a1.locked, a1.timesRedeemed) == ("assigned", False, 0)
    assert (a2.status, a2.locked, a2.lockedUntil) == ("locked", True, lock.lockedUntil)
    assert (b3.status, b3.timesRedeemed) == ("redeemed", 1)
    assert b3.lastRedeemedAt is not None
    assert {c.assignedTo for c in page.coupons} == {"bob"}


async def test_user_without_codes(two_books, coupons, writer):
    page = await coupons.list_for_user(writer, "nobody", None, 10, None)

    assert (page.coupons, page.next_cursor) == ([], None)


async def test_end_user_lists_only_its_own_codes(make_book, coupons, alice):
    book = await make_book(["MINE"])
    await coupons.assign_random(alice, book.id, "alice", None)

    with pytest.raises(errors.Forbidden):
        await coupons.list_for_user(alice, "bob", None, 10, None)
    page = await coupons.list_for_user(alice, "alice", None, 10, None)
    assert [c.code for c in page.coupons] == ["MINE"]


@pytest.mark.parametrize("cursor", ["not a cursor", "!!!", encode_cursor(1, "x")[:-3] + "@@@",
                                    "eHl6Onh5eg"])  # the last is base64 of "xyz:xyz"
async def test_bad_cursor(two_books, coupons, writer, cursor):
    with pytest.raises(errors.InvalidRequest) as caught:
        await coupons.list_for_user(writer, "bob", None, 10, cursor)

    assert caught.value.extra["field"] == "cursor"


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(("number", "code"), [(1, "A"), (21, "A-1"), (10**18, "z" * 64),
                                              (7, "_-")])
def test_a_cursor_decodes_to_what_was_encoded(number, code):
    assert decode_cursor(encode_cursor(number, code)) == (number, code)


ISSUED = encode_cursor(21, "A")  # "MjE6QQ"


@pytest.mark.parametrize("cursor", [
    b64("21:bad code"),  # not a code
    b64("21:A\n"),
    b64("21:A:B"),
    b64("21:" + "A" * 65),
    b64("-1:A"),  # int() would take these numbers
    b64("+21:A"),
    b64(" 21:A"),
    b64("21 :A"),
    b64("\u0662\u0661:A"),  # Arabic-Indic digits
    b64("021:A"),
    b64("21"),  # no code part
    "MjE6",  # "21:", an empty code part
    b64(":A"),
    "",
    ISSUED + "==",  # padding the service never sends
    ISSUED + "=",
    "MjE6QR",  # same bytes as ISSUED, other spare bits
    "MjE6\nQQ",  # characters base64 skips
    "MjE6 QQ",
    "MjE6Q!Q",
    "MjE6QQ\u00e9",
    b64("21:\u00c9"),
], ids=repr)
def test_a_cursor_the_service_did_not_issue_is_refused(cursor):
    with pytest.raises(errors.InvalidRequest) as caught:
        decode_cursor(cursor)

    assert caught.value.extra["field"] == "cursor"


async def test_unknown_book_filter(coupons, writer):
    with pytest.raises(errors.BookNotFound):
        await coupons.list_for_user(writer, "bob", "00000000-0000-0000-0000-000000000000", 10,
                                    None)
