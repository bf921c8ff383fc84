"""Which outbox entries the writer takes as they are, and which it sets apart
to be parked (outbox.parse_entries): every field an event needs, whole
numbers that fit their columns, no NUL byte."""

from __future__ import annotations

import pytest

from couponsvc.outbox import parse_entries

pytestmark = pytest.mark.unit
BOOK = "0b6f1c9e-3a51-4f4e-9d51-5c2f0f7d2a10"


def assigned(**changes: str) -> dict[str, str]:
    fields = {"type": "assigned", "book": BOOK, "code": "SPRING-0001", "user": "u-1",
              "at": "1732470000123", "v": "1", "assignedAt": "1732470000123",
              "times": "0", "last": "0"}
    fields.update(changes)
    return {name: value for name, value in fields.items() if value != "(absent)"}


def test_well_formed_entries_become_events_in_order_and_deleted_ones_are_skipped() -> None:
    added = {"type": "codes_added", "book": BOOK, "at": "1732470000000", "v": "0",
             "count": "1000"}
    entries = [("1-0", added), ("1-1", None), ("2-0", assigned())]

    events, bad = parse_entries("s", entries)

    assert bad == []
    assert [(e.id, e.type, e.version) for e in events] == [("1-0", "codes_added", 0),
                                                          ("2-0", "assigned", 1)]
    assert events[0].event_row()["d"] == {"count": "1000"}
    assert events[1].code_row() == {"c": "SPRING-0001", "b": BOOK, "u": "u-1",
                                    "a": 1732470000123, "t": 0, "l": 0, "v": 1}


@pytest.mark.parametrize(("changes", "problem"), [
    ({"v": "(absent)"}, "missing field 'v'"),
    ({"user": ""}, "missing field(s) user"),
    ({"book": "not-a-uuid"}, "book 'not-a-uuid' is not a book id"),
    ({"v": ""}, "field 'v' is not a whole number: ''"),
    ({"v": "-1"}, "field 'v' is not a whole number: '-1'"),
    ({"times": "1.5"}, "field 'times' is not a whole number: '1.5'"),
    # str.isdigit alone would take these: Arabic-Indic and superscript digits.
    ({"at": "\u0663"}, "field 'at' is not a whole number: '\u0663'"),
    ({"last": "\u00b2"}, "field 'last' is not a whole number: '\u00b2'"),
    ({"v": "+1"}, "field 'v' is not a whole number: '+1'"),
    ({"at": " 1"}, "field 'at' is not a whole number: ' 1'"),
    ({"assignedAt": "1" * 16}, f"field 'assignedAt' is out of range: '{'1' * 16}'"),
    # v and times go into integer columns, the times (ms) into bigint ones.
    ({"v": "2147483648"}, "field 'v' is out of range: '2147483648'"),
    ({"times": "99999999999"}, "field 'times' is out of range: '99999999999'"),
    ({"user": "nul\x00byte"}, "a field contains a NUL character"),
    ({"note": "\x00"}, "a field contains a NUL character"),
])
def test_an_entry_that_cannot_be_applied_is_set_apart_with_the_reason(
        changes: dict[str, str], problem: str) -> None:
    events, bad = parse_entries("s", [("1-0", assigned()), ("2-0", assigned(**changes))])

    assert [e.id for e in events] == ["1-0"]
    assert [(b.event.id, b.problem) for b in bad] == [("2-0", problem)]


@pytest.mark.parametrize("changes", [
    pytest.param({"v": "2147483647", "times": "2147483647"}, id="integer-columns-at-their-max"),
    pytest.param({"at": "9" * 15, "assignedAt": "9" * 15, "last": "9" * 15},
                 id="milliseconds-at-15-digits"),
    pytest.param({"v": "0", "times": "0", "last": "0"}, id="zeros"),
])
def test_numbers_at_the_edges_of_their_columns_are_taken(changes: dict[str, str]) -> None:
    events, bad = parse_entries("s", [("1-0", assigned(**changes))])

    assert bad == []
    assert [e.id for e in events] == ["1-0"]
