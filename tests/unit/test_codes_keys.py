"""Code rules (couponsvc.codes) and key names (couponsvc.keys)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from couponsvc import errors
from couponsvc.codes import (
    ALPHABET,
    all_valid_and_distinct,
    check_pattern,
    code_lines,
    generate,
    is_valid_code,
)
from couponsvc.keys import DIRECTORY_BUCKETS, Keys, directory_bucket, directory_buckets

pytestmark = pytest.mark.unit


# --- codes -------------------------------------------------------------------


@pytest.mark.parametrize("code", ["A", "z", "0", "_", "-", "Ab9_-x", "X" * 64])
def test_valid_codes(code):
    assert is_valid_code(code)


@pytest.mark.parametrize(
    "code",
    ["", "X" * 65, "has space", "tab\t", "new\n", "é", "٣", "a.b", "a/b", "{x}", "a:b",
     7, None, b"AB", ["AB"]],
)
def test_invalid_codes(code):
    assert not is_valid_code(code)


@pytest.mark.parametrize(
    "codes, expected",
    [
        (["A", "B", "C-1_x"], True),
        (["X" * 64] * 1 + ["Y"], True),
        (["A", "B", "A"], False),  # a repeat
        (["A", "has space"], False),
        (["A", ""], False),
        (["A", "X" * 65], False),
        (["A", "B\nC"], False),  # two valid lines in one code: still one code
        (["A", 7], False),
        ([], False),  # nothing to load: the careful path answers
    ],
)
def test_all_valid_and_distinct(codes, expected):
    assert all_valid_and_distinct(codes) is expected


@given(st.lists(st.text(alphabet="AB_-\n é7", max_size=4), max_size=8))
def test_all_valid_and_distinct_agrees_with_code_by_code(codes):
    by_code = all(map(is_valid_code, codes)) and len(set(codes)) == len(codes)
    assert all_valid_and_distinct(codes) is (by_code and bool(codes))


@given(st.text(alphabet="AB-_\n\r \t\x0b\x0c\x1c\x1d\x1e\x1f\x85\u2028\xa0é", max_size=30))
def test_code_lines_is_splitlines_and_strip(text):
    # The fast path (str.split) must give exactly what the careful one does.
    expected = [line.strip() for line in text.splitlines() if line.strip()]
    assert code_lines(text) == expected


def test_alphabet_has_32_unambiguous_characters():
    assert len(ALPHABET) == len(set(ALPHABET)) == 32
    assert set(ALPHABET).isdisjoint("01IO")


@pytest.mark.parametrize(
    "pattern, count",
    [("##", 10), ("###", 327), ("X-####-Y", 10_485), ("#" * 12, 1_000_000)],
)
def test_patterns_with_enough_codes(pattern, count):
    check_pattern(pattern, count, "p")  # does not raise


@pytest.mark.parametrize(
    "pattern, count", [("##", 11), ("###", 328), ("X-####-Y", 10_486), ("NONE", 1), ("", 1)],
)
def test_patterns_too_small_or_without_placeholder(pattern, count):
    with pytest.raises(errors.InvalidRequest) as caught:
        check_pattern(pattern, count, "codePattern")

    assert caught.value.extra["field"] == "codePattern"


def test_generate_gives_distinct_codes_of_the_pattern():
    codes = generate("AB-###-##", 3000)

    assert len(codes) == len(set(codes)) == 3000
    char = f"[{ALPHABET}]"
    assert all(re.fullmatch(f"AB-{char}{{3}}-{char}{{2}}", code) for code in codes)


def test_generate_fills_a_small_keyspace_without_repeats():
    # 32 codes out of 32: only possible if collisions are redrawn.
    assert sorted(generate("K#", 32)) == sorted(f"K{c}" for c in ALPHABET)


# --- keys --------------------------------------------------------------------


def test_directory_buckets_is_directory_bucket_of_each():
    codes = [f"CODE{n}" for n in range(1000)]
    assert directory_buckets(codes) == [directory_bucket(code) for code in codes]


def test_book_keys_share_one_hash_tag():
    book = Keys("cb").book(42)
    names = [book.meta, book.free, book.assigned, book.locks, book.events, book.lock("C-1"),
             book.user("bob@example.com"), book.idempotency("checkout", "k")]

    assert all(name.startswith("cb:{book:42}:") for name in names)
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert len(set(names)) == len(names)


def test_prefix_sits_outside_the_braces():
    keys = Keys("shop")

    assert keys.books == "shop:books"
    assert keys.book_seq == "shop:book-seq"
    assert keys.book(7).meta == "shop:{book:7}:meta"
    assert keys.user_books("bob") == "shop:{user:bob}:books"
    assert re.fullmatch(r"shop:\{dir:[0-9a-f]{2}\}:[0-9a-f]{4}", keys.directory("A1"))
    # The slot depends on the tag only, so prefixes do not move data between slots.
    assert key_slot(keys.book(7).meta.encode()) == key_slot(Keys("cb").book(7).meta.encode())


def test_different_books_usually_land_in_different_slots():
    slots = {key_slot(Keys().book(n).meta.encode()) for n in range(1, 101)}
    assert len(slots) > 90


def test_directory_bucket_is_stable():
    # Pinned: a change would orphan every code already in the directory.
    assert directory_bucket("A1") == 27777
    assert directory_bucket("SALE-2345") == 38974
    assert Keys().directory("A1") == "cb:{dir:6c}:6c81"


def test_directory_buckets_spread_codes():
    buckets = [directory_bucket(f"CODE-{n}") for n in range(2000)]

    assert all(0 <= b < DIRECTORY_BUCKETS for b in buckets)
    assert len(set(buckets)) > 1900


def test_idempotency_keys_differ_by_caller_and_key():
    book = Keys().book(1)

    assert book.idempotency("a", "k") == book.idempotency("a", "k")
    assert len({book.idempotency("a", "k"), book.idempotency("b", "k"),
                book.idempotency("a", "k2"), book.idempotency("ak", ""),
                book.idempotency("", "ak")}) == 5
    assert re.fullmatch(r"cb:\{book:1\}:idem:[0-9a-f]{32}", book.idempotency("x:{y}", "a b"))
