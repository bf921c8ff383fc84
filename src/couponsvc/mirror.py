"""How the durable record in Postgres maps onto the values Redis holds.

Shared by `rebuild`, `verify` and `inspect`, so that all three agree on what
"the same" means: a book row becomes the `meta` fields create_book.lua and
Books.create write, and a codes row becomes the `assigned` hash's value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from couponsvc.instants import datetime_to_ms, ms_to_datetime
from couponsvc.records import BookRow

# The highest book number: books.num is a Postgres integer.
LAST_BOOK_NUMBER = 2**31 - 1
# Rows per cursor fetch and per Redis pipeline: bounded memory at any size.
CHUNK = 10_000


SELECT_BOOKS = (
    "SELECT id::text AS id, num, name, description, multiple_redeems_allowed,"
    " max_redeems_per_code, max_per_user, lock_ttl_ms, valid_from, valid_until, created_at"
    " FROM books"
)
SELECT_CODES = (
    "SELECT code, owner, assigned_at, times_redeemed, last_redeemed_at, version, added_at"
    " FROM codes WHERE book_id = $1::uuid"
)
BOOK_COUNTS = (
    "SELECT count(*) AS total, count(owner) AS assigned,"
    " coalesce(sum(times_redeemed), 0) AS redeemed, count(DISTINCT owner) AS users"
    " FROM codes WHERE book_id = $1::uuid"
)
# Where each code is in Postgres, for codes found on the Redis side.
CODES_BOOKS = (
    "SELECT c.code, c.book_id::text AS book_id, b.num FROM codes c"
    " JOIN books b ON b.id = c.book_id WHERE c.code = ANY($1::text[])"
)

# The meta fields that are settings (compared by verify), then the counters.
SETTING_FIELDS = ("id", "num", "name", "description", "multipleRedeemsAllowed",
                  "maxRedeemsPerCode", "maxPerUser", "lockTtlMs", "validFrom", "validUntil")
COUNTER_FIELDS = ("total", "assigned", "redeemed")


def to_ms(moment: datetime | None) -> int:
    """Milliseconds since the epoch, as Books.create writes a book's times
    (Postgres keeps microseconds; Redis drops them); 0 for None, as the
    scripts write a code's times."""
    return 0 if moment is None else datetime_to_ms(moment)


def iso(ms: int | str | None) -> str:
    """A time in milliseconds as an operator reads it; '-' for none."""
    if ms is None or int(ms) == 0:
        return "-"
    moment = ms_to_datetime(ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def book_row(record: Mapping[str, Any]) -> BookRow:
    return BookRow(**dict(record))


async def fetch_books(conn: asyncpg.Connection, where: str = "", *args: Any) -> list[BookRow]:
    """Every book (or those matching `where`), in book-number order."""
    rows = await conn.fetch(f"{SELECT_BOOKS} {where} ORDER BY num", *args)
    return [book_row(r) for r in rows]


def meta_settings(row: BookRow) -> dict[str, str]:
    """The settings fields of `meta` for this book, as Redis holds them (strings)."""
    fields = {
        "id": row.id,
        "num": str(row.num),
        "name": row.name,
        "description": row.description,
        "multipleRedeemsAllowed": "1" if row.multiple_redeems_allowed else "0",
        "lockTtlMs": str(row.lock_ttl_ms),
    }
    # Absent, not empty, means "no limit" / "open" to the scripts.
    if row.max_redeems_per_code is not None:
        fields["maxRedeemsPerCode"] = str(row.max_redeems_per_code)
    if row.max_per_user is not None:
        fields["maxPerUser"] = str(row.max_per_user)
    if row.valid_from is not None:
        fields["validFrom"] = str(to_ms(row.valid_from))
    if row.valid_until is not None:
        fields["validUntil"] = str(to_ms(row.valid_until))
    return fields


@dataclass(frozen=True, slots=True)
class Assignment:
    """One value of a book's `assigned` hash."""

    owner: str
    assigned_at: int
    times: int
    last: int
    version: int

    def encode(self) -> str:
        return f"{self.owner}|{self.assigned_at}|{self.times}|{self.last}|{self.version}"

    @classmethod
    def decode(cls, raw: str) -> Assignment:
        """Raises ValueError for a value the scripts would not have written."""
        owner, at, times, last, version = raw.rsplit("|", 4)
        return cls(owner, int(at), int(times), int(last), int(version))

    @classmethod
    def of_row(cls, row: Mapping[str, Any]) -> Assignment:
        """A codes row with an owner, as the `assigned` hash holds it."""
        return cls(str(row["owner"]), to_ms(row["assigned_at"]), int(row["times_redeemed"]),
                   to_ms(row["last_redeemed_at"]), int(row["version"]))


# The Assignment fields as verify and inspect name them (the doc's names).
ASSIGNMENT_FIELDS = (("owner", "owner"), ("assignedAt", "assigned_at"),
                     ("timesRedeemed", "times"), ("lastRedeemedAt", "last"),
                     ("version", "version"))


def shown(field: str, value: object) -> str:
    """An assignment field for a person: times as ISO, the rest as is."""
    if field in ("assignedAt", "lastRedeemedAt"):
        return iso(int(str(value)))
    return str(value)


async def chunks(conn: asyncpg.Connection, query: str, *args: Any,
                 size: int = CHUNK) -> AsyncIterator[list[Any]]:
    """The query's rows through a server-side cursor, `size` at a time, so a
    book of a million codes is never in memory at once. Needs a transaction."""
    cursor = await conn.cursor(query, *args)
    while rows := await cursor.fetch(size):
        yield rows


def book_number(raw: object) -> int | None:
    """A book number as Redis keeps it (a decimal string), or None for one
    that is absent or corrupted: the operator tools report it, not crash."""
    text = str(raw) if raw is not None else ""
    if not (text.isascii() and text.isdigit() and len(text) <= 10):
        return None
    return int(text) if int(text) <= LAST_BOOK_NUMBER else None
