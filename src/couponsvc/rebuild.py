"""`couponsvc rebuild`: reconstruct the Redis state from the durable record.

For a Redis that was lost or is new. Rebuilt: the books index and sequence,
each book's `meta`, `free` set and `assigned` hash, each user's codes per book
and books per user, and the code directory. Not rebuilt, because they were
never durable: live locks and the `locks` zsets, idempotency records, and the
outbox entries (each stream is created empty, with the writer's group).

Postgres is read through one snapshot (a repeatable-read transaction) with a
server-side cursor, and Redis is written with non-transactional pipelines, a
chunk at a time, so memory stays flat however many codes there are.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redis.typing import EncodableT

from couponsvc.keys import Keys
from couponsvc.mirror import (
    CHUNK,
    SELECT_CODES,
    Assignment,
    book_number,
    chunks,
    fetch_books,
    meta_settings,
    to_ms,
)
from couponsvc.outbox import GROUP
from couponsvc.records import BookRow

NOT_RESTORED = ("not restored (never durable): live locks, idempotency records;"
                " outbox streams start empty")


class RedisNotEmpty(Exception):
    """The target Redis already holds books; rebuilding would mix two states."""


@dataclass
class Summary:
    books: int = 0
    codes: int = 0
    assigned: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"rebuilt {self.books} book(s), {self.codes} code(s), {self.assigned} assigned,"
                f" in {self.seconds:.1f} s")


@dataclass
class _Tally:
    """One book's counters, summed while its codes stream past."""

    total: int = 0
    assigned: int = 0
    redeemed: int = 0
    updated: datetime | None = None

    def note(self, moment: datetime | None) -> None:
        if moment is not None and (self.updated is None or moment > self.updated):
            self.updated = moment


async def rebuild(redis: Redis, conn: asyncpg.Connection, keys: Keys, *,
                  force: bool = False, chunk: int = CHUNK) -> Summary:
    """Writes every book from Postgres into Redis. Refuses (RedisNotEmpty) when
    Redis already has the books index, unless `force`: then each book's meta,
    free and assigned keys are replaced, and the other keys are added to."""
    started = time.perf_counter()
    if not force and await redis.exists(keys.books):
        count = await redis.hlen(keys.books)
        raise RedisNotEmpty(f"Redis already holds {keys.books} ({count} book(s));"
                            " rebuild only into an empty Redis, or pass --force")
    summary = Summary()
    # One snapshot: books and codes agree even while the writer is running.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        books = await fetch_books(conn)
        for row in books:
            tally = await _rebuild_book(redis, conn, keys, row, force, chunk)
            summary.books += 1
            summary.codes += tally.total
            summary.assigned += tally.assigned
    if books:
        await _raise_sequence(redis, keys, max(row.num for row in books))
    summary.seconds = time.perf_counter() - started
    return summary


async def _rebuild_book(redis: Redis, conn: asyncpg.Connection, keys: Keys, row: BookRow,
                        force: bool, chunk: int) -> _Tally:
    book = keys.book(row.num)
    if force:
        # Replaced, not merged: a stale member would outlive the rebuild.
        await redis.delete(book.meta, book.free, book.assigned)
    tally = _Tally()
    tally.note(row.created_at)
    async for rows in chunks(conn, SELECT_CODES, row.id, size=chunk):
        await _write_codes(redis, keys, row.num, rows, tally)
    meta: dict[EncodableT, EncodableT] = {name: value for name, value in meta_settings(row).items()}
    meta.update({
        "createdAt": to_ms(row.created_at),
        # Redis moves updatedAt on code uploads and redemptions: the latest of those.
        "updatedAt": to_ms(tally.updated),
        "total": tally.total,
        "assigned": tally.assigned,
        "redeemed": tally.redeemed,
        "v": 1,
    })
    await _create_group(redis, book.events)
    # Meta and the index entry last: the API and the writer find the book only
    # once its codes and its stream are in place.
    await redis.hset(book.meta, mapping=meta)
    await redis.hset(keys.books, row.id, row.num)
    return tally


async def _write_codes(redis: Redis, keys: Keys, number: int, rows: list[Any],
                       tally: _Tally) -> None:
    book = keys.book(number)
    free: list[str] = []
    assigned: dict[EncodableT, EncodableT] = {}
    by_user: dict[str, list[str]] = defaultdict(list)
    directory: dict[str, dict[EncodableT, EncodableT]] = defaultdict(dict)
    for row in rows:
        code = row["code"]
        directory[keys.directory(code)][code] = number
        tally.total += 1
        tally.note(row["added_at"])
        if row["owner"] is None:
            free.append(code)
            continue
        assigned[code] = Assignment.of_row(row).encode()
        by_user[row["owner"]].append(code)
        tally.assigned += 1
        tally.redeemed += row["times_redeemed"]
        tally.note(row["last_redeemed_at"])
    async with redis.pipeline(transaction=False) as pipe:
        if free:
            pipe.sadd(book.free, *free)
        if assigned:
            pipe.hset(book.assigned, mapping=assigned)
        for user, codes in by_user.items():
            pipe.zadd(book.user(user), dict.fromkeys(codes, 0))
            pipe.sadd(keys.user_books(user), number)
        for bucket, entries in directory.items():
            pipe.hset(bucket, mapping=entries)
        await pipe.execute()


async def _create_group(redis: Redis, stream: str) -> None:
    # A writer that kept running through the loss believes the group exists
    # (it creates groups once per process) and would get NOGROUP until restarted.
    try:
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):  # --force over a stream that has its group
            raise


async def _raise_sequence(redis: Redis, keys: Keys, highest: int) -> None:
    # Never lowered (a --force run over a Redis that handed out more numbers):
    # the next book must not reuse a number.
    current = book_number(await redis.get(keys.book_seq))  # None too when corrupted
    if current is None or current < highest:
        await redis.set(keys.book_seq, highest)
