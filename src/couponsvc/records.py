"""The admin path's synchronous writes to PostgreSQL.

Creating a book and adding codes are rare and cheap next to checkout traffic,
so they are written to Postgres first (bulk, set-based) and only then to
Redis: when the admin call answers, its effect is durable. Postgres's primary
key on `codes.code` is the final word on uniqueness across books.

Each write's transaction commits with `synchronous_commit = on`, whatever the
server's default: with it off, an answered create or upload could vanish in
a Postgres crash while Redis serves it (the writer's batches do the same).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from couponsvc.db import SYNCHRONOUS_COMMIT, rows_written


@dataclass(frozen=True, slots=True)
class BookRow:
    id: str
    num: int
    name: str
    description: str
    multiple_redeems_allowed: bool
    max_redeems_per_code: int | None
    max_per_user: int | None
    lock_ttl_ms: int
    valid_from: datetime | None
    valid_until: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CodeClaims:
    """Where each offered code stands in Postgres after an insert."""

    new: set[str]  # the subset inserted by this call (asked for with want_new)
    elsewhere: list[str]  # another book's


class Records:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection in a transaction whose commit is on disk. A session
        that finds the database read-only (a demoted primary, a maintenance
        switch) is replaced with every other: it would stay read-only once
        the database is writable again."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(SYNCHRONOUS_COMMIT)
                yield conn
        except asyncpg.ReadOnlySQLTransactionError:
            await self.pool.expire_connections()
            raise

    async def insert_book(self, row: BookRow) -> None:
        async with self._writing() as conn:
            await conn.execute(
                "INSERT INTO books (id, num, name, description, multiple_redeems_allowed,"
                " max_redeems_per_code, max_per_user, lock_ttl_ms, valid_from, valid_until,"
                " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                row.id, row.num, row.name, row.description, row.multiple_redeems_allowed,
                row.max_redeems_per_code, row.max_per_user, row.lock_ttl_ms, row.valid_from,
                row.valid_until, row.created_at,
            )

    async def book_number(self, book_id: str) -> int | None:
        number: int | None = await self.pool.fetchval(
            "SELECT num FROM books WHERE id = $1", book_id)
        return number

    async def count_unassigned(self, book_id: str) -> int:
        count: int = await self.pool.fetchval(
            "SELECT count(*) FROM codes WHERE book_id = $1 AND owner IS NULL", book_id)
        return count

    async def unassigned_codes(self, book_id: str) -> list[str]:
        """The book's codes nobody holds (a create's retry compares them with Redis)."""
        rows = await self.pool.fetch(
            "SELECT code FROM codes WHERE book_id = $1 AND owner IS NULL", book_id)
        return [row["code"] for row in rows]

    async def claim_codes(self, book_id: str, codes: Sequence[str],
                          want_new: bool = False) -> CodeClaims:
        """Inserts the codes for the book; reports which are another's (and,
        with `want_new`, which this call inserted: generation needs them); the
        rest are now this book's.
        The codes must be distinct and valid (codes.VALID_CODE): they travel
        unescaped in COPY's text format."""
        if not codes:
            return CodeClaims(set(), [])
        async with self._writing() as conn:
            if await _copy_all_new(conn, book_id, codes):
                return CodeClaims(set(codes) if want_new else set(), [])
            await conn.execute(
                'CREATE TEMP TABLE incoming (code text COLLATE "C" NOT NULL) ON COMMIT DROP')
            await conn.copy_records_to_table("incoming", records=((c,) for c in codes),
                                             columns=["code"])
            # In index order: each insert lands next to the previous one.
            insert = ("INSERT INTO codes (code, book_id) SELECT code, $1 FROM incoming"
                      " ORDER BY code ON CONFLICT (code) DO NOTHING")
            new: set[str] | None = None
            if want_new:
                new = {r["code"] for r in await conn.fetch(insert + " RETURNING code", book_id)}
                inserted = len(new)
            else:
                # The count alone ("INSERT 0 N"): sending a million codes back
                # costs seconds, and usually every code is new.
                inserted = rows_written(await conn.execute(insert, book_id))
            existing: list[Any] = []
            if inserted < len(codes):
                existing = await conn.fetch(
                    "SELECT c.code, c.book_id::text AS book_id FROM incoming i"
                    " JOIN codes c USING (code)")
        others = {r["code"] for r in existing if r["book_id"] != book_id}
        new = new if new is not None else set()
        return CodeClaims(new, [c for c in codes if c in others])

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")


async def _copy_all_new(conn: asyncpg.Connection, book_id: str, codes: Sequence[str]) -> bool:
    """The common case, fast: COPY the codes straight into `codes`, in a
    savepoint. True when every code was new; False (nothing written) when one
    already exists anywhere, and the caller sorts out which.

    COPY has no ON CONFLICT, but it is about twice as fast as inserting from a
    staging table, and a bulk load of fresh codes is what uploads and
    generation almost always are. Sorted, so that concurrent loads of
    overlapping codes take their index entries in the same order (no deadlock)
    and each index insert lands next to the previous one.
    """
    # COPY's text format, built with one join: codes are [A-Za-z0-9_-] (no
    # tab, newline or backslash to escape), and building a million records
    # for the binary format cost the API more than Postgres spent on them.
    rows = f"\t{book_id}\n".join(sorted(codes)) + f"\t{book_id}\n"

    async def payload() -> AsyncIterator[bytes]:
        yield rows.encode()

    try:
        async with conn.transaction():
            await conn.copy_to_table("codes", source=payload(), columns=["code", "book_id"],
                                     format="text")
    except asyncpg.UniqueViolationError:
        return False
    return True
